"""Every bad input ends the same way: one `error: ...` line on stderr and exit status 2."""

import pytest

from common.errors import UserError, exit_on_user_error, exit_with_error


def test_exit_with_error_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as stop:
        exit_with_error("dataset.n_train='abc' has type str; fix the value")
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: dataset.n_train='abc' has type str; fix the value\n"


def test_a_command_line_main_turns_a_user_error_into_that_line(capsys):
    def main():
        raise UserError("summary.csv is not a file")

    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(main)
    assert stop.value.code == 2 and capsys.readouterr().err == "error: summary.csv is not a file\n"
    assert exit_on_user_error(lambda: 7) == 7


def test_other_exceptions_are_not_swallowed():
    def main():
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        exit_on_user_error(main)
