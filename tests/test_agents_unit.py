"""Knobs, edits and their validation, the decision rule, prices and agent specs (no bus, no network)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agents.edits import Edit, SeenSet, apply_edits, ast_sha256, sha256, validate_source
from agents.errors import SpecError, ValidationError
from agents.knobs import apply_knobs, knob_values, parse_knobs, search_space
from agents.options import AgentOptions, cli_options, llm_kwargs, load_agent_file, loop_kwargs, merge, summary
from agents.policy import DecisionRule
from agents.pricing import Pricing, cost_usd, format_usd, parse_price, price_of
from agents.spec import AgentSpec, parse_agent_spec
from tests.agents_support import STANDIN_TRAIN_PY as SRC

TRAIN_PY = Path(__file__).resolve().parents[1] / "train.py"


def test_knobs_parse_and_apply_minimal_line_edit() -> None:
    knobs = parse_knobs(SRC)
    assert knobs["DEPTH"].value == 4 and knobs["TOTAL_BATCH_SIZE"].value == 2048
    assert knobs["WINDOW_PATTERN"].value == "L"
    out = apply_knobs(SRC, {"DEPTH": 6, "MATRIX_LR": 0.02, "TOTAL_BATCH_SIZE": 4096})
    changed = [(a, b) for a, b in zip(SRC.splitlines(), out.splitlines(), strict=True) if a != b]
    assert changed == [
        ("DEPTH = 4                 # transformer blocks", "DEPTH = 6                 # transformer blocks"),
        ("MATRIX_LR = 0.04          # Muon lr", "MATRIX_LR = 0.02          # Muon lr"),
        ("TOTAL_BATCH_SIZE = 2**11  # tokens per step", "TOTAL_BATCH_SIZE = 4096  # tokens per step"),
    ]
    assert knob_values(out)["MATRIX_LR"] == 0.02
    with pytest.raises(ValidationError, match="not knobs"):
        apply_knobs(SRC, {"NOPE": 1})


def test_search_space_derives_from_present_knobs_and_samples_inside() -> None:
    space = {s.name: s for s in search_space(SRC)}
    assert set(space) == {"DEPTH", "ASPECT_RATIO", "MATRIX_LR", "EMBEDDING_LR", "WARMDOWN_RATIO",
                          "TOTAL_BATCH_SIZE", "WINDOW_PATTERN"}  # fmt: skip
    assert space["MATRIX_LR"].log and space["TOTAL_BATCH_SIZE"].kind == "choice"
    rng = random.Random(1)
    for s in space.values():
        for _ in range(20):
            assert s.contains(s.sample(rng)), s
    twins = "CPU_DEPTH = 4\nGPU_DEPTH = 8\nMATRIX_LR = 0.04\nLOG_INTERVAL = 1.0\n"
    assert [s.name for s in search_space(twins, device="cpu")] == ["CPU_DEPTH", "MATRIX_LR"]


def test_apply_edits_reports_missing_and_ambiguous_search() -> None:
    out = apply_edits(SRC, [Edit("DEPTH = 4 ", "DEPTH = 5 ")])
    assert "DEPTH = 5 " in out
    with pytest.raises(ValidationError, match="not found"):
        apply_edits(SRC, [Edit("DEPTH = 99", "x")])
    with pytest.raises(ValidationError, match="occurs 3 times"):
        apply_edits(SRC, [Edit("    return ", "x")])
    with pytest.raises(ValidationError, match=r"only train\.py"):
        apply_edits(SRC, [Edit("DEPTH = 4", "DEPTH = 5", file="prepare.py")])
    with pytest.raises(ValidationError, match="no edits"):
        apply_edits(SRC, [])


def test_validate_rejects_non_compiling_and_side_effects_and_size() -> None:
    with pytest.raises(ValidationError, match="does not parse"):
        validate_source(SRC.replace("def main() -> None:", "def main( -> None:"), SRC)
    with pytest.raises(ValidationError, match="compile"):
        validate_source(SRC + "\ndef f():\n    return\n    nonlocal x\n", SRC)
    with pytest.raises(ValidationError, match="module level must only define things"):
        validate_source(SRC + "\nmain()\n", SRC)
    with pytest.raises(ValidationError, match="module level must only define things"):
        validate_source(SRC + "\nfor i in range(3):\n    pass\n", SRC)
    with pytest.raises(ValidationError, match="module level must only define things"):
        validate_source(SRC + "\nDATA = open('/etc/passwd').read()\n", SRC)
    with pytest.raises(ValidationError, match="no module-level build_model"):  # what a runner would refuse
        validate_source(SRC.replace("def build_model(", "def make_model("), SRC)
    with pytest.raises(ValidationError, match="limit"):
        validate_source(SRC + "#" * 300_000, SRC)
    # the runner's rule: no calls at module level, not even harmless-looking ones (a runner would refuse it)
    with pytest.raises(ValidationError, match="call at line"):
        validate_source(SRC + "\nSEQ = int(2**8)\n", SRC)
    ok = validate_source(SRC + "\nSEQ = 2**8\n", SRC)
    assert ok.sha256 == sha256(ok.source) and ok.diff.startswith("--- a/train.py")
    # one rule for agents and runners: a side effect is refused even when the parent already has it
    parent = SRC + "\nprint('hi')\n"
    with pytest.raises(ValidationError, match="module level"):
        validate_source(parent.replace("DEPTH = 4", "DEPTH = 5"), parent)


def _full_identity(source: str) -> tuple[str, dict]:
    return ast_sha256(source), knob_values(source)


def test_a_knob_edit_is_identified_as_a_full_parse_would() -> None:
    """A knob-only change of a runnable parent is not parsed whole (the parent's statement dumps, with the
    changed lines' own put in place): its ast_sha256 and knob values must be exactly those of a full parse,
    for any knob edit, and for layouts where a line is not what it looks like."""
    real = (Path(__file__).resolve().parent.parent / "train.py").read_text()
    rng = random.Random(7)
    knobs = list(parse_knobs(real).values())
    values = [0, 1, -1, 7, 3.5, 1e-4, 0.0, True, False, (1, 2), "'x'", "2**18", "3 * 64", "-0.5", "1_000"]
    for _ in range(60):
        lines = real.splitlines(keepends=True)
        for k in rng.sample(knobs, rng.randint(1, 4)):
            line = lines[k.lineno - 1]
            v = rng.choice(values)
            text = v if isinstance(v, str) else repr(v)
            new = line[: k.col_offset] + text + line[k.end_col_offset :]
            if rng.random() < 0.3:  # spacing and comments change the text, not the identity
                new = new.replace(" = ", "=", 1).rstrip("\n") + "  # tuned\n"
            lines[k.lineno - 1] = new
        source = "".join(lines)
        v = validate_source(source, real, parent_runs=True)
        assert (v.ast_sha256, v.knobs) == _full_identity(source)
    hostile = [
        # a name set twice: the value is the last line's, whichever line changes
        ("A = 1\nA = 2\ndef build_model(c): ...\n", "A = 5\nA = 2\ndef build_model(c): ...\n"),
        ("A = 1\nA = 2\ndef build_model(c): ...\n", "A = 1\nA = 6\ndef build_model(c): ...\n"),
        # two statements on the knob's line, kept or dropped
        ("A = 1; import os\ndef build_model(c): ...\n", "A = 2; import os\ndef build_model(c): ...\n"),
        ("A = 1; import os\ndef build_model(c): ...\n", "A = 2\ndef build_model(c): ...\n"),
        ("A = 1; B = 3\ndef build_model(c): ...\n", "A = 2; B = 3\ndef build_model(c): ...\n"),
        # a knob-looking line inside a string, and an annotated knob
        ('D = """\nA = 1\n"""\nA: int = 1\ndef build_model(c): ...\n',
         'D = """\nA = 1\n"""\nA: int = 9\ndef build_model(c): ...\n'),
        # line breaks that str.splitlines sees and Python does not
        ("A = 1  # \u2028x\nB = 2\ndef build_model(c): ...\n", "A = 1  # \u2028x\nB = 3\ndef build_model(c): ...\n"),
        ("A = 1  # \x0cx\nB = 2\ndef build_model(c): ...\n", "A = 1  # \x0cx\nB = 7\ndef build_model(c): ...\n"),
        # ... where a "knob line" by str.splitlines is the end of a comment to Python: B stays 2
        ("A = 1  # \u2028\nB = 2\ndef build_model(c): ...\n", "A = 1  # \u2028B = 9\nB = 2\ndef build_model(c): ...\n"),
    ]  # fmt: skip
    for parent, source in hostile:
        v = validate_source(source, parent, parent_runs=True)
        assert (v.ast_sha256, v.knobs) == _full_identity(source), (parent, source)


def test_dedup_exact_and_normalised_ast() -> None:
    seen = SeenSet()
    v = validate_source(SRC.replace("DEPTH = 4", "DEPTH = 5"), SRC)
    seen.add(v.sha256, v.ast_sha256)
    with pytest.raises(ValidationError, match="exact"):
        seen.check(v)
    cosmetic = v.source.replace("# transformer blocks", "# blocks!").replace("DEPTH = 5", "DEPTH   =   5")
    c = validate_source(cosmetic, SRC)
    assert c.sha256 != v.sha256 and c.ast_sha256 == v.ast_sha256
    with pytest.raises(ValidationError, match="comments or formatting"):
        seen.check(c)
    assert ast_sha256(SRC.replace("DEPTH = 4", "DEPTH = 6")) != v.ast_sha256


def test_decision_rule_needs_k_sigma_or_a_confirming_repeat() -> None:
    rule = DecisionRule(k=2.0)
    sigma = 0.01
    assert rule.decide([3.39], 3.40, sigma)[0] == "confirm"  # better, but within 2σ: repeat it
    assert rule.decide([3.37], 3.40, sigma)[0] == "keep"  # 3σ better
    assert rule.decide([3.41], 3.40, sigma)[0] == "discard"
    no_repeat = DecisionRule(k=2.0, confirm=False)
    verdict, why = no_repeat.decide([3.39], 3.40, sigma)
    assert verdict == "discard" and "noise" in why  # a keep below σ is not taken
    # two runs averaging 1.6σ better clear 2σ/√2
    assert rule.decide([3.385, 3.383], 3.40, sigma)[0] == "keep"
    assert rule.decide([3.395, 3.399], 3.40, sigma)[0] == "discard"
    # σ unknown or from one run: the fallback (0.5 % of the reference)
    assert rule.sigma(None, 0, 3.4) == pytest.approx(0.017)
    assert rule.sigma(0.01, 1, 3.4) == pytest.approx(0.017)
    assert rule.sigma(0.01, 3, 3.4) == 0.01
    # nothing to compare against (no baseline on the class yet) is never a keep
    verdict, why = rule.decide([5.5], None, sigma)
    assert verdict == "discard" and "no baseline" in why


def test_prices() -> None:
    assert price_of("claude-sonnet-4-5-20250929") == (3.0, 15.0)
    assert price_of("llama3:8b") == (0.0, 0.0)
    assert cost_usd("gpt-4o", 1_000_000, 100_000) == pytest.approx(3.5)
    assert cost_usd("my-model", 1_000_000, 0, {"my-model": (1.0, 2.0)}) == 1.0


def test_prices_by_provider_model_and_base_url() -> None:
    warnings: list[str] = []
    openai = Pricing("openai", None, warn=warnings.append)
    # exact names before prefixes: o3-mini is not o3, gpt-4o-mini is not gpt-4o; dated variants are theirs
    assert openai.price("o3-mini") == (1.1, 4.4) and openai.price("o3") == (2.0, 8.0)
    assert openai.price("gpt-4o-mini") == (0.15, 0.6) and openai.price("gpt-4o-2024-08-06") == (2.5, 10.0)
    # a provider model with no list price: $0, and one warning per model
    assert openai.price("o9-preview") == (0.0, 0.0) and openai.price("o9-preview") == (0.0, 0.0)
    assert openai.price("gpt-4o-realtime") == (0.0, 0.0)  # not a dated variant of gpt-4o
    assert len(warnings) == 2 and "--price o9-preview=IN,OUT" in warnings[0]
    # the provider's own host, and a provider's model name elsewhere
    assert Pricing("openai", "https://api.openai.com/v1").price("gpt-4o") == (2.5, 10.0)
    assert Pricing("anthropic", "https://api.anthropic.com").price("claude-haiku-4-5") == (1.0, 5.0)
    local = Pricing("openai", "http://127.0.0.1:8000/v1", warn=warnings.append)
    assert local.price("gpt-4o") == (0.0, 0.0) and local.cost("gpt-4o", 10**6, 10**6) == 0.0
    assert len(warnings) == 2  # a local server is free without a warning
    proxy = Pricing("anthropic", "https://llm-proxy.example.com", {"claude-sonnet-4-5": (3.0, 15.0)})
    assert proxy.price("claude-sonnet-4-5-20250929") == (3.0, 15.0)  # given prices cover dated variants
    # costs are rounded (no float dust), and shown rounded
    assert Pricing("openai").cost("gpt-4o-mini", 4443, 500) == 0.00096645
    assert format_usd(0.00096645) == "$0.0010" and format_usd(12.3456) == "$12.35"
    assert parse_price("qwen2.5:7b=0.1,0.2") == ("qwen2.5:7b", (0.1, 0.2))
    for bad in ("gpt-4o=2.5", "gpt-4o", "=1,2", "m=a,b", "m=-1,2"):
        with pytest.raises(ValueError, match="bad price"):
            parse_price(bad)


def test_agent_options_layers_and_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_KEY", "s3cret")
    f = tmp_path / "agents.toml"
    f.write_text(
        '[defaults]\ntimeout = 600\nmax_tokens = 2048\nheaders = { "X-Team" = "lab" }\n\n'
        '[[agent]]\nspec = "openai:qwen@http://127.0.0.1:8000/v1"\nname = "qwen"\ntool_choice = "auto"\n'
        'max_tokens = 4096\nheaders = { "X-Api-Key" = "${PROXY_KEY}" }\nprices = { "qwen" = [0.1, 0.2] }\n'
        "max_empty_waves = 2\n"
    )
    file = load_agent_file(f)
    flags = cli_options(timeout=30.0, prices=("qwen=1,2",))
    opts = merge(file.defaults, file.agent[0], flags)
    assert (opts.timeout, opts.max_tokens, opts.tool_choice, opts.name) == (30.0, 4096, "auto", "qwen")
    assert opts.headers == {"X-Team": "lab", "X-Api-Key": "${PROXY_KEY}"} and opts.prices == {"qwen": (1.0, 2.0)}
    llm = llm_kwargs(opts)
    assert llm["headers"]["X-Api-Key"] == "s3cret" and llm["timeout"] == 30.0
    assert loop_kwargs(opts) == {"max_empty_waves": 2}
    shown = summary(opts)  # what AgentJoined records
    assert shown["headers"] == ["X-Api-Key", "X-Team"] and "s3cret" not in repr(shown)
    f.write_text('[[agent]]\nspec = "optuna"\ntool_choice = "always"\n')
    with pytest.raises(SpecError, match=r"Invalid enum value 'always' - at `\$.agent\[0\].tool_choice`"):
        load_agent_file(f)
    f.write_text("[[agent]]\nname = 'x'\n")
    with pytest.raises(SpecError, match="has no spec"):
        load_agent_file(f)
    with pytest.raises(SpecError, match="api_key_env = 'NOPE_NOT_SET'"):
        llm_kwargs(AgentOptions(api_key_env="NOPE_NOT_SET"))


def test_agent_specs() -> None:
    assert parse_agent_spec("optuna") == AgentSpec("optuna", "tpe")
    assert parse_agent_spec("random").kind == "random"
    assert parse_agent_spec("claude:claude-sonnet-4-5") == AgentSpec("claude", "claude-sonnet-4-5")
    s = parse_agent_spec("openai:qwen2.5:7b@http://localhost:11434/v1")
    assert s == AgentSpec("openai", "qwen2.5:7b", "http://localhost:11434/v1")
    assert s.name == "openai-qwen2-5-7b"
    for bad in ("", "gemini:x", "claude:", "openai:m@ftp://x"):
        with pytest.raises(SpecError):
            parse_agent_spec(bad)


def test_a_knob_change_of_a_runnable_parent_skips_the_full_check() -> None:
    from agents.edits import knob_lines_only, validate_source

    changed = apply_knobs(SRC, {"DEPTH": 5, "MATRIX_LR": 0.02})
    assert knob_lines_only(SRC, changed)
    assert not knob_lines_only(SRC, changed.replace("DEPTH = 5", "DEPTH = f(5)"))  # not a literal
    assert not knob_lines_only(SRC, changed.replace("DEPTH = 5", "DEPTHS = 5"))  # another knob
    assert not knob_lines_only(SRC, changed.replace("import math", "import os"))  # code
    fast = validate_source(changed, SRC, parent_runs=True)
    assert fast == validate_source(changed, SRC)
    # a knob line that gains a statement is code, not a knob change: the whole check runs, and refuses a call
    for extra in ("; print(1)", "; open('/etc/passwd')"):
        with pytest.raises(ValidationError, match="module level"):
            validate_source(changed.replace("DEPTH = 5", "DEPTH = 5" + extra), SRC, parent_runs=True)
    assert not knob_lines_only(SRC, changed.replace("DEPTH = 5", "DEPTH = 5; import os"))
    # a knob sharing its line with a statement that goes on: dropping the rest breaks the file
    parent = SRC + "\nA = 1; B = (\n    2)\n"
    with pytest.raises(ValidationError, match="does not parse"):
        validate_source(parent.replace("A = 1; B = (", "A = 2"), parent, parent_runs=True)


async def test_optuna_parallel_first_wave_moves_one_or_two_knobs_from_the_parent() -> None:
    """A wave asked before any result is back (16 runners at the start) is local moves from the parent, as
    the one-runner start is: TPE with nothing told samples every knob at once, far from anything good."""
    from agents.proposers.optuna_tpe import OptunaProposer
    from tests.agents_support import make_context

    base = TRAIN_PY.read_text()
    p = OptunaProposer(base, seed=0, device="cpu", n_startup_trials=8)
    names = {s.name for s in p.space}
    parent = {k: v for k, v in knob_values(base).items() if k in names}
    batch = await p.propose(make_context(base), 16)
    assert len(batch.proposals) == 16
    for d in batch.proposals:
        assert d.source is not None
        got = knob_values(d.source)
        changed = [k for k in parent if got.get(k) != parent[k]]
        assert 1 <= len(changed) <= 2, (d.description, changed)
