"""A small invented world: entities, relations, passages and multi-hop questions.

Every name is built from random syllables ("Bekora", "Lumeva"), so no model can know an answer
without looking it up. The world is a pure function of its `WorldConfig` (seed included):

- countries; cities, each in a country; people, each born in a city, working for a company, with
  a profession; companies, each based in a city and founded by a person.
- one short passage per entity (its title is the entity's name), e.g.
  "Bekora is a painter. Bekora was born in Lumeva. Bekora works for Zantrix."
- questions in a few templates, 1 to 3 hops; each hop is one search for an entity name:

  | hops | template                                                   | chain                     |
  |------|------------------------------------------------------------|---------------------------|
  | 1    | Where was {person} born?                                   | person -> city            |
  | 1    | Which company does {person} work for?                      | person -> company         |
  | 1    | In which country is {city}?                                | city -> country           |
  | 2    | In which country was {person} born?                        | person -> city -> country |
  | 2    | Who founded the company {person} works for?                | person -> company -> founder |
  | 2    | In which city is the company {person} works for based?     | person -> company -> city |
  | 3    | In which country is the company {person} works for based?  | person -> company -> city -> country |

The defaults (4 countries, 12 cities, 8 companies, 30 people: 54 passages of under 20 words)
keep a prompt plus three search results well under 400 tokens, small enough for a 3M-parameter
model to learn to search.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

from agentrl.tools.corpus import Document

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "sh"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "", "", "n", "l", "r", "s"]
PROFESSIONS = ["painter", "baker", "sailor", "teacher", "doctor", "farmer", "poet", "engineer"]


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    num_countries: int = 4
    num_cities: int = 12
    num_companies: int = 8
    num_people: int = 30
    #: 0: every name is new random syllables. N > 0: names are drawn from a fixed list of N
    #: names shared by all worlds, so a small model meets each name often enough to learn
    #: its spelling, while which entity bears which name (and so every fact) still changes
    #: with the seed.
    name_pool: int = 0


@dataclass(frozen=True)
class Question:
    """A question, its answer, and the entity names searched for at each hop (in order)."""

    id: str
    question: str
    answer: str
    hops: int
    template: str
    chain: tuple[str, ...]


@dataclass
class World:
    config: WorldConfig
    country_of: dict[str, str] = field(default_factory=dict)      # city -> country
    capital_of: dict[str, str] = field(default_factory=dict)      # country -> city
    born_in: dict[str, str] = field(default_factory=dict)         # person -> city
    works_for: dict[str, str] = field(default_factory=dict)       # person -> company
    profession: dict[str, str] = field(default_factory=dict)      # person -> profession
    based_in: dict[str, str] = field(default_factory=dict)        # company -> city
    founded_by: dict[str, str] = field(default_factory=dict)      # company -> person

    @property
    def countries(self) -> list[str]:
        return list(self.capital_of)

    @property
    def cities(self) -> list[str]:
        return list(self.country_of)

    @property
    def companies(self) -> list[str]:
        return list(self.based_in)

    @property
    def people(self) -> list[str]:
        return list(self.born_in)

    def kind(self, name: str) -> str:
        for kind, table in (("person", self.born_in), ("city", self.country_of),
                            ("company", self.based_in), ("country", self.capital_of)):
            if name in table:
                return kind
        raise KeyError(f"{name!r} is not an entity of this world")

    # --- text -----------------------------------------------------------------------------------

    def facts(self, name: str) -> list[tuple[str, str | None, str]]:
        """The sentences about an entity as (before, linked entity or None, after) triples, so the
        same facts render as plain text (SearchQA) or with links (WebQA)."""
        kind = self.kind(name)
        if kind == "person":
            return [(f"{name} is a {self.profession[name]}.", None, ""),
                    (f"{name} was born in ", self.born_in[name], "."),
                    (f"{name} works for ", self.works_for[name], ".")]
        if kind == "city":
            return [(f"{name} is a city in ", self.country_of[name], ".")]
        if kind == "company":
            return [(f"{name} is a company based in ", self.based_in[name], "."),
                    (f"{name} was founded by ", self.founded_by[name], ".")]
        return [(f"{name} is a country. Its capital is ", self.capital_of[name], ".")]

    def passage(self, name: str) -> str:
        return " ".join(before + (link or "") + after for before, link, after in self.facts(name))

    def documents(self) -> list[Document]:
        names = self.countries + self.cities + self.companies + self.people
        return [Document(id=f"{self.kind(n)}-{n}", title=n, text=self.passage(n)) for n in names]

    # --- questions ------------------------------------------------------------------------------

    def questions(self) -> list[Question]:
        """Every question the templates make in this world, in a fixed order."""
        out: list[Question] = []

        def add(template: str, question: str, answer: str, chain: tuple[str, ...]) -> None:
            out.append(Question(f"{template}:{chain[0]}", question, answer, len(chain), template, chain))

        for p in self.people:
            city, company = self.born_in[p], self.works_for[p]
            hq, founder = self.based_in[company], self.founded_by[company]
            add("born", f"Where was {p} born?", city, (p,))
            add("employer", f"Which company does {p} work for?", company, (p,))
            add("born_country", f"In which country was {p} born?", self.country_of[city], (p, city))
            add("employer_founder", f"Who founded the company {p} works for?", founder, (p, company))
            add("employer_city", f"In which city is the company {p} works for based?", hq, (p, company))
            add("employer_country", f"In which country is the company {p} works for based?",
                self.country_of[hq], (p, company, hq))
        for c in self.cities:
            add("city_country", f"In which country is {c}?", self.country_of[c], (c,))
        return out


@functools.lru_cache(maxsize=4)
def name_pool(size: int) -> tuple[str, ...]:
    """The shared list of `size` names (the same for every world and seed)."""
    rng, taken = random.Random("agentrl-world-names"), set()
    return tuple(_name(rng, taken) for _ in range(size))


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        syllables = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 3)))]
        name = ("".join(syllables) + rng.choice(_CODAS)).capitalize()
        if name not in taken and 4 <= len(name) <= 9:
            taken.add(name)
            return name


@functools.lru_cache(maxsize=64)
def make_world(config: WorldConfig = WorldConfig()) -> World:
    """The world of `config` (cached: the same config always gives the same world)."""
    if min(config.num_countries, config.num_cities, config.num_companies, config.num_people) < 1:
        raise ValueError(f"every entity count must be at least 1: {config}")
    if config.num_cities < config.num_countries:
        raise ValueError("need at least one city per country (num_cities >= num_countries)")
    rng = random.Random(config.seed)
    taken: set[str] = set()
    world = World(config)
    counts = (config.num_countries, config.num_cities, config.num_companies, config.num_people)
    if config.name_pool:
        if config.name_pool < sum(counts):
            raise ValueError(f"name_pool={config.name_pool} is smaller than the world's {sum(counts)} entities")
        names = iter(rng.sample(name_pool(config.name_pool), sum(counts)))
    else:
        names = iter(_name(rng, taken) for _ in range(sum(counts)))
    countries, cities, companies, people = ([next(names) for _ in range(n)] for n in counts)
    for i, city in enumerate(cities):  # every country gets at least one city, its capital
        world.country_of[city] = countries[i] if i < len(countries) else rng.choice(countries)
    for i, country in enumerate(countries):
        world.capital_of[country] = cities[i]
    for company in companies:
        world.based_in[company] = rng.choice(cities)
        world.founded_by[company] = rng.choice(people)
    for person in people:
        world.born_in[person] = rng.choice(cities)
        world.works_for[person] = rng.choice(companies)
        world.profession[person] = rng.choice(PROFESSIONS)
    return world
