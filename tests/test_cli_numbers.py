"""Every numeric option of every command goes through edgevision.cli._args and is refused
out of range in one line with its range, exit code 2 (never replaced by a default)."""

import argparse

import pytest

from edgevision.cli import build_parser, main


def _numeric_actions():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for cmd, p in sub.choices.items():
        for action in p._actions:
            if action.type in (int, float) or getattr(action.type, "__name__", "") in ("integer", "number"):
                yield cmd, p, action


ACTIONS = [(cmd, a.option_strings[0] if a.option_strings else a.dest, a) for cmd, _, a in _numeric_actions()]


def test_there_are_numeric_options():
    assert len(ACTIONS) > 20


@pytest.mark.parametrize("cmd,opt,action", ACTIONS, ids=[f"{c} {o}" for c, o, _ in ACTIONS])
def test_numeric_option_is_validated(cmd, opt, action):
    assert action.type not in (int, float), f"{cmd} {opt} uses a bare {action.type.__name__}: no range check"


def _required_args(cmd):
    return {"bench": ["emo_1m"], "export": ["emo_1m"], "train": ["emo_1m", "--data", "x"],
            "predict": ["emo_1m", "img.jpg", "--checkpoint", "x"], "info": ["emo_1m"],
            "eval": ["emo_1m", "--checkpoint", "x", "--data", "x"], "fetch": ["emo_1m"],
            "sample-data": ["out"]}.get(cmd, [])


@pytest.mark.parametrize("cmd,opt,action", [a for a in ACTIONS if a[1].startswith("--")],
                         ids=[f"{c} {o}" for c, o, _ in ACTIONS if o.startswith("--")])
@pytest.mark.parametrize("value", ["nan", "-99999999999", "zero"])
def test_out_of_range_is_one_line_exit_2(cmd, opt, action, value, capsys):
    if action.nargs not in (None, "?"):
        pytest.skip("list-valued option")
    with pytest.raises(SystemExit) as e:
        main([cmd, *_required_args(cmd), opt, value])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert len(err.splitlines()) == 1 and opt in err, err
