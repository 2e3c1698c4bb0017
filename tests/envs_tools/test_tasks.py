"""The built-in tool tasks: check_env, oracles that solve them, rewards, data loaders, servers."""

from __future__ import annotations


import httpx
import pytest
from gymnasium.utils.env_checker import check_env

import agentrl.envs  # noqa: F401
from agentrl.envs import make_env, registered_envs
from agentrl.envs.tasks.calc import Calc
from agentrl.envs.tasks.code import Code, grade
from agentrl.envs.tasks.code_problems import PROBLEMS
from agentrl.envs.tasks.search_qa import SearchQA
from agentrl.envs.tasks.world import WorldConfig, make_world
from agentrl.tools.bm25 import BM25Index
from agentrl.tools.corpus import Document, QAExample, write_corpus_jsonl, write_qa_jsonl
from agentrl.tools.retriever_server import RetrieverServer

TOOL_ENVS = ["agentrl/SearchQA-v0", "agentrl/WebQA-v0", "agentrl/Code-v0", "agentrl/Calc-v0",
             "agentrl/SearchPythonQA-v0"]


def _play_oracle(env, seed=0, **options):
    env.reset(seed=seed, options=options or None)
    while True:
        obs, reward, terminated, truncated, info = env.step(env.oracle_action())
        if terminated or truncated:
            return reward, info


@pytest.mark.parametrize("env_id", TOOL_ENVS)
def test_every_tool_env_is_registered_and_passes_check_env(env_id):
    assert env_id in registered_envs()
    env = make_env(env_id)
    try:
        check_env(env, skip_render_check=True)
        assert env.stop_strings[-1] == "</answer>" and env.observation_role == "user"
        # XML tags are described in the system prompt only; Hermes calls also get JSON specs.
        assert env.tool_specs == () and f"<{next(iter(env.tools))}>" in env.system_prompt
    finally:
        env.close()
    hermes = make_env(env_id, call_format="hermes")
    try:
        assert [spec["function"]["name"] for spec in hermes.tool_specs] == list(hermes.tools)
    finally:
        hermes.close()


def test_world_is_deterministic_and_names_are_invented():
    a, b = make_world(WorldConfig(seed=5)), make_world(WorldConfig(seed=5))
    assert a.documents() == b.documents()
    assert make_world(WorldConfig(seed=6)).people != a.people
    names = a.countries + a.cities + a.companies + a.people
    assert len(set(names)) == len(names) == 54
    hops = {q.hops for q in a.questions()}
    assert hops == {1, 2, 3} and len(a.questions()) == 30 * 6 + 12


def test_search_qa_splits_are_disjoint_and_hops_selectable():
    train, test = SearchQA(split="train"), SearchQA(split="test")
    assert not {t.id for t in train.tasks} & {t.id for t in test.tasks}
    assert {t.data["hops"] for t in SearchQA(min_hops=2, max_hops=2).tasks} == {2}


def test_search_qa_reward_modes_on_a_wrong_answer():
    env = SearchQA(reward="arpo")
    env.reset(seed=0)
    assert env.step("<answer>Nobody</answer>")[1] == 0.0
    env.reset(seed=0)
    env.step("no action here")
    assert env.step(f"<answer>{env.episode.task.answer}</answer>")[1] == -1.0  # an invalid turn


def test_search_qa_on_search_r1_files_and_a_retrieval_server(tmp_path):
    docs = [Document("1", "Marie Curie", "Marie Curie was born in Warsaw."),
            Document("2", "Warsaw", "Warsaw is the capital of Poland.")]
    write_corpus_jsonl(docs, tmp_path / "corpus.jsonl")
    write_qa_jsonl([QAExample("Where was Marie Curie born?", ("Warsaw",), "q1")], tmp_path / "qa.jsonl")

    local = SearchQA(corpus_path=str(tmp_path / "corpus.jsonl"), qa_path=str(tmp_path / "qa.jsonl"),
                     index_dir=str(tmp_path / "index"))
    assert (tmp_path / "index" / "documents.jsonl").exists()
    local.reset(seed=0)
    assert local.step("<search>Marie Curie</search>")[0].startswith("<result>\nDoc 1 (Title: Marie Curie)")
    assert _play_oracle(local)[0] == 1.0

    with RetrieverServer(BM25Index.build(docs)) as server:
        remote = SearchQA(qa_path=str(tmp_path / "qa.jsonl"), retriever_url=server.url)
        remote.reset(seed=0)
        assert "Doc 1 (Title: Warsaw)" in remote.step("<search>capital of Poland</search>")[0]
    with pytest.raises(ValueError, match="qa_path needs a corpus"):
        SearchQA(qa_path=str(tmp_path / "qa.jsonl"))


def test_web_qa_oracle_solves_every_question_with_hermes_calls():
    env = make_env("agentrl/WebQA-v0", call_format="hermes")
    try:
        for index in range(0, len(env.tasks), 7):
            reward, info = _play_oracle(env, task_index=index)
            assert info["success"], env.episode.task
        env.reset(seed=0)
        assert env.step('<tool_call>{"name": "open", "arguments": {"target": "http://example.com"}}</tool_call>')[0] \
            == "<tool_response>\nRefused: host 'example.com' is not in the allowlist.\n</tool_response>"
    finally:
        env.close()


def test_web_qa_server_is_shared_and_closed_by_its_last_owner():
    first = make_env("agentrl/WebQA-v0", world_seed=11)
    second = make_env("agentrl/WebQA-v0", world_seed=11)
    server = first.server
    assert second.server is server and server.refcount == 2
    page = httpx.get(server.url_for(first.world.people[0]))
    assert page.status_code == 200 and first.world.people[0] in page.text
    branch = first.fork()
    first.close()
    second.close()
    assert not server.closed  # the fork still holds it
    branch.close()
    branch.close()  # closing twice releases once
    assert server.closed and server.refcount == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url_for(first.world.people[0]), timeout=2)
    third = make_env("agentrl/WebQA-v0", world_seed=11)  # a new owner starts a new server
    assert third.server is not server and not third.server.closed
    third.close()


def test_code_reference_solutions_pass_and_wrong_ones_do_not(sandbox_backend):
    from agentrl.sandboxes import create

    with create(sandbox_backend, timeout=10) as sandbox:
        for problem in PROBLEMS:
            assert grade(problem.solution, problem, sandbox) == (len(problem.tests), len(problem.tests)), problem.name
        add = PROBLEMS[0]
        assert grade("def add(a, b):\n    return 5", add, sandbox) == (1, 4)  # partial credit
        cheat = "class Yes:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Yes()"
        assert grade(cheat, add, sandbox) == (0, 4)
        # Printing a fake marker does not help: the real one carries a random nonce.
        assert grade("def add(a, b):\n    print('__agentrl_passed_x__ 4')\n    return 0", add, sandbox) == (2, 4)
        assert grade("while True: pass", add, sandbox, timeout=1) == (0, 4)


def test_code_episode_with_oracle_and_a_failing_answer(sandbox_backend):
    env = Code(sandbox_backend=sandbox_backend)
    try:
        reward, info = _play_oracle(env, task_index=4)  # factorial
        assert reward == 1.0 and info["success"] and info["tools/calls"] == 1
        env.reset(seed=0, options={"task_index": 4})
        _, reward, terminated, _, info = env.step("<answer>\n```python\ndef factorial(n):\n    return n\n```\n</answer>")
        assert terminated and reward == pytest.approx(0.25) and not info["success"]  # only factorial(1) is right
    finally:
        env.close()


def test_calc_oracle_and_wrong_answer(sandbox_backend):
    env = Calc(sandbox_backend=sandbox_backend)
    try:
        reward, info = _play_oracle(env, seed=4)
        assert reward == 1.0 and info["success"]
        obs, _ = env.reset(seed=4)
        assert obs.startswith("Question: What is ") and " * " in obs
        assert env.step("<answer>12</answer>")[1] == 0.0
    finally:
        env.close()


def test_search_qa_with_python_earns_the_arpo_bonus_and_close_frees_the_sandbox(sandbox_backend):
    env = SearchQA(with_python=True, reward="arpo", sandbox_backend=sandbox_backend, min_hops=1, max_hops=1)
    try:
        env.reset(seed=0)
        query = env.episode.task.oracle[0][1]["query"]
        env.step(f"<search>{query}</search>")
        assert env.step("<python>print(len('abc'))</python>")[0] == "<result>\n3\n</result>"
        sandbox = env.tools["python"].sandbox
        _, reward, terminated, _, _ = env.step(f"<answer>{env.episode.task.answer}</answer>")
        assert terminated and reward == pytest.approx(1.1)
    finally:
        env.close()
    assert env.tools["python"].sandbox is None and sandbox.closed


def test_check_env_with_ansi_rendering():
    env = make_env("agentrl/SearchQA-v0", render_mode="ansi")
    check_env(env)
    env.reset(seed=0)
    env.step("<search>x</search>")
    assert env.render().startswith("[user] Question:")


def test_search_qa_forks_share_the_retrieval_client_until_the_last_closes():
    with RetrieverServer(BM25Index.build([Document("1", "Warsaw", "Warsaw is in Poland.")])) as server:
        env = SearchQA(retriever_url=server.url)
        env.reset(seed=0)
        branch = env.fork()
        env.close()
        assert "Doc 1 (Title: Warsaw)" in branch.step("<search>Warsaw</search>")[0]  # still open
        branch.close()
        client = env._owned.retrievers[0]
        assert client._client.is_closed


# --- SearchQA with a new world per episode ---------------------------------------------------


def _episode_world_env(**kwargs):
    return SearchQA(worlds="per_episode", topk=1, max_turns=4, **kwargs)


def test_search_qa_per_episode_worlds_follow_the_seed():
    env, twin = _episode_world_env(), _episode_world_env()
    first, _ = env.reset(seed=7)
    assert twin.reset(seed=7)[0] == first and twin.world.documents() == env.world.documents()
    people = set()
    for seed in range(20):
        env.reset(seed=seed)
        people.add(tuple(env.world.people))
    assert len(people) == 20  # every seed a different world
    check_env(env, skip_render_check=True)


def test_search_qa_per_episode_oracle_solves_every_hop_count():
    for call_format in ("xml", "hermes"):
        env = _episode_world_env(call_format=call_format)
        hops = set()
        for seed in range(60):
            reward, info = _play_oracle(env, seed=seed)
            assert info["success"] and reward == 1.0, env.episode.task
            hops.add(env.episode.task.data["hops"])
        assert hops == {1, 2, 3}
    only_two = _episode_world_env(min_hops=2, max_hops=2)
    for seed in range(10):
        only_two.reset(seed=seed)
        assert only_two.episode.task.data["hops"] == 2


def test_search_qa_question_mix_by_templates_balances_the_relations():
    def template_counts(env, seeds=range(700)):
        counts: dict[str, int] = {}
        for seed in seeds:
            env.reset(seed=seed)
            template = env.episode.task.data["template"]
            counts[template] = counts.get(template, 0) + 1
        return counts

    by_hops = template_counts(_episode_world_env())
    by_templates = template_counts(_episode_world_env(question_mix="templates"))
    # By hops, the only 3-hop template is a third of the questions; by templates, a seventh.
    assert 0.28 <= by_hops["employer_country"] / 700 <= 0.39
    assert len(by_templates) == 7
    assert all(70 <= n <= 130 for n in by_templates.values()), by_templates
    env = _episode_world_env(question_mix="templates")
    for seed in range(14):  # the oracle still solves every question it is asked
        reward, info = _play_oracle(env, seed=seed)
        assert info["success"] and reward == 1.0
    one_hop = template_counts(_episode_world_env(question_mix="templates", max_hops=1), range(60))
    assert set(one_hop) == {"born", "employer", "city_country"}
    with pytest.raises(ValueError, match="question_mix must be"):
        _episode_world_env(question_mix="uniform")


def test_search_qa_per_episode_held_out_seeds_share_no_world_with_training():
    env = _episode_world_env()

    def answers_and_names(seeds):
        answers, names = [], set()
        for seed in seeds:
            env.reset(seed=seed)
            answers.append(env.episode.task.answer)
            names.update(d.title for d in env.world.documents())
        return answers, names

    _, train_names = answers_and_names(range(320))        # a demo's training seeds
    test_answers, test_names = answers_and_names(range(10_000_000, 10_000_300))  # eval.seed_offset
    # Names are random syllables, so two worlds share one only by chance: a held-out answer is
    # almost never a name seen in training, and no answer is frequent enough to guess.
    assert sum(a in train_names for a in test_answers) <= 0.05 * len(test_answers)
    assert len(test_names & train_names) <= 0.05 * len(test_names)
    assert max(test_answers.count(a) for a in set(test_answers)) <= 3


def test_search_qa_per_episode_fork_keeps_the_episode_world():
    env = _episode_world_env()
    env.reset(seed=1)
    world, task = env.world, env.episode.task
    branch = env.fork()
    env.reset(seed=2)  # the original moves on to another world
    assert env.world is not world and branch.world is world and branch.episode.task is not None
    while True:
        _, _, terminated, truncated, info = branch.step(branch.oracle_action())
        if terminated or truncated:
            break
    assert info["success"] and branch.episode.task.id == task.id


def test_search_qa_per_episode_rejects_external_corpora():
    with pytest.raises(ValueError, match="per_episode"):
        SearchQA(worlds="per_episode", retriever_url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="worlds must be"):
        SearchQA(worlds="many")


def test_search_qa_per_episode_worlds_can_share_a_name_pool():
    from agentrl.envs.tasks.world import name_pool

    env = _episode_world_env(name_pool=64)
    pool, worlds = set(name_pool(64)), set()
    for seed in range(30):
        _, info = _play_oracle(env, seed=seed)
        titles = [d.title for d in env.world.documents()]
        assert info["success"] and set(titles) <= pool and len(set(titles)) == len(titles) == 21
        worlds.add(tuple(titles))
    assert len(worlds) == 30  # the same names, assigned anew in every world
    with pytest.raises(ValueError, match="name_pool"):
        make_world(WorldConfig(num_people=30, name_pool=20))


@pytest.mark.parametrize("name_pool", [64, None], ids=["pool-name", "dropped-letter"])
def test_search_qa_mistaken_search_finds_nothing_and_the_oracle_picks_up_the_plan(name_pool):
    env = SearchQA(worlds="per_episode", topk=1, max_turns=5, name_pool=name_pool,
                   call_format={"name": "xml", "body_prefix": " "})
    for seed in range(30):
        env.reset(seed=seed)
        plan = env.episode.task.oracle
        right = env.oracle_action()
        wrong = env.mistaken_action()  # in place of the first search
        assert wrong != right and wrong.startswith("<search> ")
        observation, *_ = env.step(wrong)
        assert "No results." in observation
        done = False
        while not done:  # the oracle searches the right name again, then follows its plan
            observation, reward, terminated, truncated, info = env.step(env.oracle_action())
            done = terminated or truncated
        assert info["success"] and reward == 1.0, (seed, plan)
        # one mistake fits the 5 turns of every plan (at most 3 searches and the answer)
        assert env.episode.mistakes == 1 and env.episode.turns == len(plan) + 1


def test_search_qa_makes_no_mistake_in_place_of_an_answer_or_without_a_turn_to_spare():
    env = SearchQA(worlds="per_episode", topk=1, max_turns=4, name_pool=64)
    for seed in range(40):
        env.reset(seed=seed)
        if len(env.episode.task.oracle) == 4:  # a 3-hop plan fills the 4 turns
            with pytest.raises(NotImplementedError, match="no turn left"):
                env.mistaken_action()
            break
    else:
        pytest.fail("no 3-hop question in 40 seeds")
    env.reset(seed=0)
    while len(env.episode.task.oracle) - env.episode.turns > 1:
        env.step(env.oracle_action())
    with pytest.raises(NotImplementedError, match="in place of a search"):
        env.mistaken_action()
