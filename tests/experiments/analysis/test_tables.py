from experiments.analysis.tables import markdown_table


def test_a_table_has_a_header_a_rule_and_one_line_per_row():
    assert markdown_table(["a", "b"], [[1, 0.5], ["x", None]]) == "| a | b |\n|---|---|\n| 1 | 0.5 |\n| x | None |"


def test_a_pipe_inside_a_cell_is_escaped_so_the_columns_stay_aligned():
    table = markdown_table(["setting"], [["a|b"]])
    assert table.splitlines()[2] == "| a\\|b |"


def test_a_table_without_rows_is_its_header_and_rule():
    assert markdown_table(["only"], []) == "| only |\n|---|"
