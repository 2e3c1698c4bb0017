"""Numbers for the invented world (`agentrl.envs.tasks.world`), and questions that need arithmetic.

The SearchQA world has names and relations only. This module adds numeric facts, derived
deterministically from the world's `WorldConfig` (seed included), without changing the world
itself or its SearchQA passages:

- a birth year per person (1900-1999);
- a founding year per company (its founder is 20 to 60 years old then, and it is not after 2024);
- an employee count per company (3 to 5 digits);
- a population per city (5 or 6 digits).

`numbered_passage` renders an entity's passage with its numbers in it:

    Bekora is a painter. Bekora was born in Tarvik in 1953. Bekora works for Zantrix.
    Zantrix is a company based in Tarvik. Zantrix was founded by Bekora in 1987. Zantrix has 4210 employees.
    Tarvik is a city in Lumeva. Tarvik has a population of 523817.

and `arithmetic_questions` asks questions whose answer is a difference or a sum of two numbers
found by two searches, so the agent must search twice, compute in python, then answer:

| template          | question                                                        | searches          | python               |
|-------------------|-----------------------------------------------------------------|-------------------|----------------------|
| age_gap           | How many years older is {older} than {younger}?                 | older, younger    | younger's - older's birth year |
| founder_age       | How old was the founder of {company} when they founded it?      | company, founder  | founding - birth year |
| total_employees   | How many employees do {company} and {other} have together?      | company, other    | sum of employees     |
| population_gap    | How many more people live in {city} than in {other}?            | city, other       | difference of populations |
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass

from agentrl.tools.bm25 import BM25Index
from agentrl.tools.corpus import Document
from agentrl.envs.tasks.world import World, WorldConfig, make_world

ARITHMETIC_TEMPLATES = ("age_gap", "founder_age", "total_employees", "population_gap")
#: No company is founded after this year (founders born late in the century found early).
LATEST_FOUNDING = 2024


@dataclass(frozen=True)
class WorldNumbers:
    """The numeric facts of one world, by entity name."""

    birth_year: dict[str, int]     # person -> year
    founded_in: dict[str, int]     # company -> year
    employees: dict[str, int]      # company -> head count
    population: dict[str, int]     # city -> inhabitants


@dataclass(frozen=True)
class ArithmeticQuestion:
    """A question whose answer is `expression` evaluated: the numbers of the two entities of
    `chain`, searched in that order."""

    id: str
    question: str
    answer: str
    template: str
    chain: tuple[str, str]
    expression: str

    @property
    def code(self) -> str:
        """The python call of a perfect agent: print the expression."""
        return f"print({self.expression})"


@functools.lru_cache(maxsize=64)
def world_numbers(config: WorldConfig) -> WorldNumbers:
    """The numbers of the world of `config` (a pure function of it; cached)."""
    world = make_world(config)
    # A generator of its own (string seeds hash deterministically in `random`), so adding
    # numbers never shifts the draws that build the world's names and relations.
    rng = random.Random(f"agentrl-world-numbers:{config.seed}")
    birth_year = {person: rng.randint(1900, 1999) for person in world.people}
    founded_in, employees = {}, {}
    for company in world.companies:
        born = birth_year[world.founded_by[company]]
        founded_in[company] = born + rng.randint(20, min(60, LATEST_FOUNDING - born))
        digits = rng.randint(3, 5)
        employees[company] = rng.randint(10 ** (digits - 1), 10**digits - 1)
    population = {}
    for city in world.cities:
        digits = rng.randint(5, 6)
        population[city] = rng.randint(10 ** (digits - 1), 10**digits - 1)
    return WorldNumbers(birth_year, founded_in, employees, population)


def numbered_passage(world: World, numbers: WorldNumbers, name: str) -> str:
    """The entity's passage with its numbers: SearchQA's sentences, years and counts added."""
    kind = world.kind(name)
    if kind == "person":
        profession = world.profession[name]
        article = "an" if profession[0] in "aeiou" else "a"
        return (f"{name} is {article} {profession}. "
                f"{name} was born in {world.born_in[name]} in {numbers.birth_year[name]}. "
                f"{name} works for {world.works_for[name]}.")
    if kind == "company":
        return (f"{name} is a company based in {world.based_in[name]}. "
                f"{name} was founded by {world.founded_by[name]} in {numbers.founded_in[name]}. "
                f"{name} has {numbers.employees[name]} employees.")
    if kind == "city":
        return (f"{name} is a city in {world.country_of[name]}. "
                f"{name} has a population of {numbers.population[name]}.")
    return world.passage(name)  # countries have no numbers


def numbered_documents(config: WorldConfig) -> list[Document]:
    """The world's documents (same ids and titles as `World.documents`) with numbered passages."""
    world, numbers = make_world(config), world_numbers(config)
    return [Document(id=d.id, title=d.title, text=numbered_passage(world, numbers, d.title))
            for d in world.documents()]


# Large enough for every group of a rollout batch in per-episode mode (as `search_qa.world_index`).
@functools.lru_cache(maxsize=64)
def numbers_index(config: WorldConfig) -> BM25Index:
    """The BM25 index of the world's numbered passages (built once per process; milliseconds)."""
    return BM25Index.build(numbered_documents(config))


def arithmetic_questions(config: WorldConfig) -> list[ArithmeticQuestion]:
    """Every arithmetic question of the world, in a fixed order (see the module docstring).

    Pairs whose numbers are equal are left out (a gap of 0 reads as a trick question).
    """
    world, numbers = make_world(config), world_numbers(config)
    out: list[ArithmeticQuestion] = []

    def add(template: str, question: str, chain: tuple[str, str], expression: str) -> None:
        answer = str(eval(expression, {"__builtins__": {}}))  # noqa: S307 - our own integers and one operator
        out.append(ArithmeticQuestion(f"{template}:{chain[0]}:{chain[1]}", question, answer,
                                      template, chain, expression))

    years = numbers.birth_year
    for a, b in itertools.combinations(world.people, 2):
        if years[a] != years[b]:
            older, younger = (a, b) if years[a] < years[b] else (b, a)
            add("age_gap", f"How many years older is {older} than {younger}?", (older, younger),
                f"{years[younger]} - {years[older]}")
    for company in world.companies:
        founder = world.founded_by[company]
        add("founder_age", f"How old was the founder of {company} when they founded it?",
            (company, founder), f"{numbers.founded_in[company]} - {years[founder]}")
    for a, b in itertools.combinations(world.companies, 2):
        add("total_employees", f"How many employees do {a} and {b} have together?", (a, b),
            f"{numbers.employees[a]} + {numbers.employees[b]}")
    people = numbers.population
    for a, b in itertools.combinations(world.cities, 2):
        if people[a] != people[b]:
            big, small = (a, b) if people[a] > people[b] else (b, a)
            add("population_gap", f"How many more people live in {big} than in {small}?", (big, small),
                f"{people[big]} - {people[small]}")
    return out
