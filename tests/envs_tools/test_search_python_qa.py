"""SearchPythonQA-v0: numbers in the world's passages, arithmetic questions, and an env whose
oracle searches, computes in a real sandbox and answers."""

from __future__ import annotations

import dataclasses
import re

import pytest
from gymnasium.utils.env_checker import check_env

from agentrl.envs import make_env
from agentrl.envs.tasks.search_python_qa import SearchPythonQA
from agentrl.envs.tasks.search_qa import EPISODE_WORLD
from agentrl.envs.tasks.world import make_world, name_pool
from agentrl.envs.tasks.world_numbers import (
    ARITHMETIC_TEMPLATES, arithmetic_questions, numbered_documents, world_numbers,
)

#: The number each template reads from each of its two searches' passages.
NUMBER_PATTERNS = {
    "age_gap": (r"was born in \w+ in (\d+)\.", r"was born in \w+ in (\d+)\."),
    "founder_age": (r"was founded by \w+ in (\d+)\.", r"was born in \w+ in (\d+)\."),
    "total_employees": (r"has (\d+) employees\.", r"has (\d+) employees\."),
    "population_gap": (r"has a population of (\d+)\.", r"has a population of (\d+)\."),
}
OPERATORS = {"age_gap": "-", "founder_age": "-", "total_employees": "+", "population_gap": "-"}


@pytest.fixture
def pool(sandbox_backend):
    from agentrl.sandboxes import SandboxPool

    with SandboxPool(2, sandbox_backend) as pool:
        yield pool


def _play(env, actions=None, seed=0):
    """Play the oracle (or `actions`, then the oracle) to the end; the transcript and last step."""
    env.reset(seed=seed)
    actions = list(actions or [])
    messages = []
    while True:
        action = actions.pop(0) if actions else env.oracle_action()
        observation, reward, terminated, truncated, info = env.step(action)
        messages.append(("assistant", action))
        if terminated or truncated:
            return messages, reward, info
        messages.append((env.observation_role, observation))


def _seed_of(env, arithmetic: bool, template: str | None = None, start: int = 0) -> int:
    for seed in range(start, start + 500):
        env.reset(seed=seed)
        data = env.episode.task.data
        if data["arithmetic"] == arithmetic and template in (None, data["template"]):
            return seed
    raise AssertionError(f"no {template or arithmetic} question in 500 seeds")


# --- the numbers and the questions (no sandbox) ----------------------------------------------


def test_numbers_are_in_range_deterministic_and_leave_the_search_qa_world_alone():
    config = EPISODE_WORLD
    world = make_world(config)
    plain = [d.text for d in world.documents()]
    numbers = world_numbers(config)
    world_numbers.cache_clear()
    assert world_numbers(config) == numbers  # a pure function of the config, not of the cache
    assert [d.text for d in make_world(config).documents()] == plain  # SearchQA's passages unchanged
    assert all(1900 <= y <= 1999 for y in numbers.birth_year.values())
    assert all(100 <= n <= 99_999 for n in numbers.employees.values())
    assert all(10_000 <= n <= 999_999 for n in numbers.population.values())
    for company, founder in world.founded_by.items():
        assert 20 <= numbers.founded_in[company] - numbers.birth_year[founder] <= 60
        assert numbers.founded_in[company] <= 2024
    documents = numbered_documents(config)
    assert [(d.id, d.title) for d in documents] == [(d.id, d.title) for d in world.documents()]
    person = world.people[0]
    passage = next(d.text for d in documents if d.title == person)
    assert f"was born in {world.born_in[person]} in {numbers.birth_year[person]}." in passage


def test_every_arithmetic_question_needs_two_searches_and_its_expression_gives_the_answer():
    for seed in range(20):
        config = dataclasses.replace(EPISODE_WORLD, seed=seed, name_pool=64)
        questions = arithmetic_questions(config)
        assert {q.template for q in questions} == set(ARITHMETIC_TEMPLATES)
        for q in questions:
            left, op, right = q.expression.split(" ")
            assert op == OPERATORS[q.template] and q.code == f"print({q.expression})"
            value = int(left) + int(right) if op == "+" else int(left) - int(right)
            assert q.answer == str(value) and value > 0
            assert len(q.chain) == 2 and q.chain[0] != q.chain[1]
            # The question names both entities, except the founder, found in the company's passage.
            named = q.chain[:1] if q.template == "founder_age" else q.chain
            assert all(name in q.question for name in named)


def test_a_search_for_any_name_ranks_its_own_passage_first():
    env = SearchPythonQA()
    for seed in range(15):
        env.reset(seed=seed)
        for title in (d.title for d in env.world.documents()):
            observation = env.fork().step(f"<search> {title}</search>")[0]
            assert observation.startswith(f"<result>\nDoc 1 (Title: {title}) "), (seed, title)


def test_the_oracles_numbers_are_the_ones_its_searches_return():
    env = SearchPythonQA(arithmetic_fraction=1.0)
    seen = set()
    for seed in range(40):
        env.reset(seed=seed)
        task = env.episode.task
        template = task.data["template"]
        seen.add(template)
        found = []
        for (tool, arguments), pattern in zip(task.oracle[:2], NUMBER_PATTERNS[template]):
            assert tool == "search"
            observation = env.step(env.oracle_action())[0]
            assert f"(Title: {arguments['query']})" in observation
            found.append(re.search(pattern, observation).group(1))
        if template == "age_gap":
            found.reverse()  # the younger's year minus the older's, the order the question names them
        assert task.data["expression"] == f"{found[0]} {OPERATORS[template]} {found[1]}"
        assert env.oracle_action() == f"<python> print({task.data['expression']})</python>"
    assert seen == set(ARITHMETIC_TEMPLATES)


def test_same_seed_same_world_and_question_other_seeds_other_worlds():
    env, twin = SearchPythonQA(), SearchPythonQA()
    first, _ = env.reset(seed=7)
    assert twin.reset(seed=7)[0] == first and twin.world.documents() == env.world.documents()
    assert twin.episode.task.oracle == env.episode.task.oracle
    worlds = set()
    for seed in range(20):
        env.reset(seed=seed)
        worlds.add(tuple(d.text for d in numbered_documents(env.world.config)))
        assert {d.title for d in env.world.documents()} <= set(name_pool(64))
    assert len(worlds) == 20


def test_arithmetic_fraction_sets_the_share_and_plain_questions_have_at_most_max_hops():
    def arithmetic_share(env, seeds=range(400)):
        shares = []
        for seed in seeds:
            env.reset(seed=seed)
            shares.append(env.episode.task.data["arithmetic"])
        return sum(shares) / len(shares)

    assert 0.68 <= arithmetic_share(SearchPythonQA()) <= 0.82
    assert arithmetic_share(SearchPythonQA(arithmetic_fraction=1.0), range(50)) == 1.0
    plain = SearchPythonQA(arithmetic_fraction=0.0, max_hops=1)
    for seed in range(30):
        plain.reset(seed=seed)
        assert plain.episode.task.data["hops"] == 1 and plain.episode.task.data["arithmetic"] is False


def test_fixed_world_splits_are_disjoint():
    def ids(split):
        env = SearchPythonQA(worlds="fixed", split=split)
        out = set()
        for seed in range(300):
            env.reset(seed=seed)
            out.add(env.episode.task.id)
        return out

    train, test = ids("train"), ids("test")
    assert train and test and not train & test


@pytest.mark.parametrize("kwargs, message", [
    ({"arithmetic_fraction": 1.5}, "arithmetic_fraction must be between 0 and 1"),
    ({"worlds": "many"}, "worlds must be"),
    ({"max_hops": 4}, "max_hops must be 1, 2 or 3"),
    ({"name_pool": 10}, "name_pool=10 is smaller"),
])
def test_bad_options_are_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchPythonQA(**kwargs)


def test_wrong_number_scores_zero_and_no_answer_scores_minus_one():
    env = SearchPythonQA(arithmetic_fraction=1.0)
    env.reset(seed=0)
    answer = int(env.episode.task.answer)
    assert env.step(f"<answer> {answer + 1}</answer>")[1] == 0.0
    env.reset(seed=0)
    for _ in range(env.max_turns - 1):
        assert env.step(f"<search> {env.world.people[0]}</search>")[2:4] == (False, False)
    _, reward, terminated, truncated, info = env.step(f"<search> {env.world.people[1]}</search>")
    assert truncated and not terminated and reward == -1.0 and not info["success"]


# --- with a real sandbox ------------------------------------------------------------------------


def test_check_env_and_the_registered_id_takes_the_trainers_pool(pool):
    env = make_env("agentrl/SearchPythonQA-v0")
    try:
        assert isinstance(env, SearchPythonQA)
        check_env(env, skip_render_check=True)
    finally:
        env.close()
    pooled = make_env("agentrl/SearchPythonQA-v0", pool=pool)
    try:
        assert pooled.tools["python"].pool is pool
        assert _play(pooled, seed=_seed_of(pooled, True))[1] == pytest.approx(1.1)
    finally:
        pooled.close()


def test_the_oracle_solves_every_template_and_its_transcript_is_what_playing_shows(pool):
    env = SearchPythonQA(pool=pool)
    try:
        for template in ARITHMETIC_TEMPLATES:
            seed = _seed_of(env, True, template)
            env.reset(seed=seed)
            written = env.oracle_transcript()
            played, reward, info = _play(env, seed=seed)
            assert played == written and len(played) == 7
            assert reward == pytest.approx(1.1) and info["success"], env.episode.task
            assert info["tools/search/calls"] == 2 and info["tools/python/calls"] == 1
        plain_templates = set()
        for start in (0, 100, 200, 300):
            seed = _seed_of(env, False, start=start)
            env.reset(seed=seed)
            written = env.oracle_transcript()
            played, reward, info = _play(env, seed=seed)
            assert played == written and reward == 1.0 and info["success"], env.episode.task
            plain_templates.add(env.episode.task.data["template"])
        assert len(plain_templates) >= 2
    finally:
        env.close()


def test_the_tokenizer_corpus_starts_no_sandbox(pool):
    from agentrl.training.corpus import env_corpus

    before = pool.stats()["sandbox/checkouts"]
    texts = env_corpus(lambda: SearchPythonQA(pool=pool), range(30))
    assert pool.stats()["sandbox/checkouts"] == before
    assert sum("<python> print(" in text for text in texts) >= 15


def test_a_fork_after_a_python_call_keeps_the_variables_and_writes_only_its_own(pool):
    env = SearchPythonQA(arithmetic_fraction=1.0, pool=pool)
    try:
        env.reset(seed=_seed_of(env, True))
        env.step(env.oracle_action())
        assert env.step("<python> x = 41</python>")[0] == "<result>\n(no output)\n</result>"
        branch = env.fork()
        try:
            assert branch.world is env.world and branch.episode.task is not env.episode.task
            assert branch.step("<python> x = x + 1\nprint(x)</python>")[0] == "<result>\n42\n</result>"
            assert env.step("<python> print(x)</python>")[0] == "<result>\n41\n</result>"
            # The branch finishes its plan on its own: search, python, answer.
            while not branch.episode.done:
                _, reward, *_ = branch.step(branch.oracle_action())
            assert reward == pytest.approx(1.1)
        finally:
            branch.close()
        assert env.step("<python> print(x * 2)</python>")[0] == "<result>\n82\n</result>"
    finally:
        env.close()


def test_demonstrations_build_and_the_tiny_tokenizer_keeps_digits_and_code(pool):
    from agentrl.models import train_tokenizer
    from agentrl.rollout import collect_demonstrations
    from agentrl.training.corpus import env_corpus

    make = lambda: SearchPythonQA(pool=pool)  # noqa: E731
    tokenizer = train_tokenizer(env_corpus(make, range(200)), vocab_size=512)
    demos = collect_demonstrations(make, range(4), tokenizer, max_total_tokens=1024, env_workers=2)
    assert len(demos) == 4 and all(d.reward >= 1.0 for d in demos)
    assert any(d.reward == pytest.approx(1.1) for d in demos)
    for demo in demos:
        # The trained actions are the oracle's turns, token for token.
        trained = tokenizer.decode([t for t, m in zip(demo.token_ids, demo.loss_mask) if m])
        assert trained.count("<search> ") == sum(m.content.count("<search> ") for m in demo.messages
                                                 if m.role == "assistant") >= 1
        assert "</answer>" in trained and "<result>" not in trained
    code = "<python> print(727487 - 89406)</python>"
    ids = tokenizer(code, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == code
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert [p for p in pieces if p.isdigit()] == list("72748789406")  # one token per digit
