"""issues.csv: writing, reading back, checking, and what exclude and relabel do with it."""

import pytest

from classifier.audit.issues_file import (
    COLUMNS,
    IssueRow,
    apply_exclude,
    apply_relabel,
    read_issues,
    write_issues,
)
from classifier.errors import UserError

CLASSES = ["cat", "dog", "fox"]
TRAIN = [
    ("d/train/cat/1.jpg", 0),
    ("d/train/cat/2.jpg", 0),
    ("d/train/dog/3.jpg", 1),
    ("d/train/dog/4.jpg", 1),
]
TEST = [("d/test/cat/9.jpg", 0), ("d/test/dog/8.jpg", 1)]
ROWS = [
    IssueRow("d/train/cat/2.jpg", "label", 0.0625, given_label="cat", suggested_label="dog"),
    IssueRow("d/train/dog/4.jpg", "duplicate", 1.0, other_path="d/train/dog/3.jpg"),
    IssueRow("d/train/cat/1.jpg", "leak", 0.96875, other_path="d/test/cat/9.jpg"),
]


def test_round_trip(tmp_path):
    path = tmp_path / "issues.csv"
    write_issues(ROWS, path)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert lines[1] == "d/train/cat/2.jpg,label,cat,dog,0.0625,"
    read = read_issues(path)
    assert read == ROWS
    assert [row.where for row in read] == [f"{path} line {n}" for n in (2, 3, 4)]
    # excluding drops each row's path and keeps the copy it duplicates; the test split is untouched
    train = apply_exclude(TRAIN, read)
    assert train.samples == [("d/train/dog/3.jpg", 1)]
    assert train.dropped == ["d/train/cat/1.jpg", "d/train/cat/2.jpg", "d/train/dog/4.jpg"]
    assert apply_exclude(TEST, read).samples == TEST
    # relabelling applies label rows only
    relabelled = apply_relabel(TRAIN, read, CLASSES)
    assert relabelled.samples == [TRAIN[0], ("d/train/cat/2.jpg", 1), *TRAIN[2:]]
    assert relabelled.changed == [("d/train/cat/2.jpg", 0, 1)]


def test_paths_match_after_normalisation():
    rows = [IssueRow("./d/train//cat/2.jpg", "label", 0.1, suggested_label="fox")]
    assert apply_exclude(TRAIN, rows).dropped == ["d/train/cat/2.jpg"]
    assert apply_relabel(TRAIN, rows, CLASSES).changed == [("d/train/cat/2.jpg", 0, 2)]


def test_a_group_of_copies_keeps_the_one_never_listed():
    rows = [
        IssueRow("d/train/cat/2.jpg", "duplicate", 1.0, other_path="d/train/cat/1.jpg"),
        IssueRow("d/train/dog/3.jpg", "duplicate", 0.9, other_path="d/train/cat/2.jpg"),
    ]
    assert apply_exclude(TRAIN, rows).samples == [("d/train/cat/1.jpg", 0), ("d/train/dog/4.jpg", 1)]


def test_spreadsheet_edits_are_read(tmp_path):
    path = tmp_path / "issues.csv"
    text = (
        "score,path,issue,given_label,suggested_label,other_path,note\r\n 0.5 ,a.jpg,label,,dog,,checked\r\n"
    )
    path.write_bytes("\ufeff".encode() + text.encode())  # a BOM, reordered columns, a column of notes
    assert read_issues(path) == [IssueRow("a.jpg", "label", 0.5, suggested_label="dog")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "issues.csv is empty: expected the header path,issue,"),
        ("path,issue,given_label,suggested_label,other_path\n", "has no column score (expected path,"),
        (
            "path,issue,given_label,suggested_label,score,other_path\na.jpg,lable,,,1,\n",
            "line 2: issue 'lable'",
        ),
        (
            "path,issue,given_label,suggested_label,score,other_path\na.jpg,label,,,high,\n",
            "line 2: score 'high'",
        ),
        (
            "path,issue,given_label,suggested_label,score,other_path\na.jpg,label,,,nan,\n",
            "score 'nan' is not",
        ),
        (
            "path,issue,given_label,suggested_label,score,other_path\na.jpg,leak,,,1,\n",
            "leak row needs other",
        ),
        (
            "path,issue,given_label,suggested_label,score,other_path\n,label,,,1,\n",
            "line 2: the path is empty",
        ),
        (
            "path,issue,given_label,suggested_label,score,other_path\n\na.jpg,label\n",
            "line 3: 2 fields, expected 6",
        ),
    ],
    ids=[
        "empty",
        "no-score-column",
        "unknown-issue",
        "score-text",
        "score-nan",
        "leak-alone",
        "no-path",
        "short-row",
    ],
)
def test_bad_files_are_one_line_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "issues.csv"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        read_issues(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(UserError, match="issues.csv does not exist"):
        read_issues(tmp_path / "issues.csv")
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe\x00path")
    with pytest.raises(UserError, match="bad.csv is not UTF-8 text"):
        read_issues(tmp_path / "bad.csv")


def relabel_error(tmp_path, row_text: str) -> str:
    path = tmp_path / "issues.csv"
    path.write_text(",".join(COLUMNS) + "\nd/train/cat/1.jpg,label,cat,dog,0.1,\n" + row_text)
    with pytest.raises(UserError) as caught:
        apply_relabel(TRAIN, read_issues(path), CLASSES)
    return str(caught.value)


def test_relabel_refusals_name_the_row(tmp_path):
    message = relabel_error(tmp_path, "d/train/cat/2.jpg,label,cat,wolf,0.2,\n")
    assert message.endswith(
        "line 3: suggested_label 'wolf' is not one of the data's 3 classes (cat, dog, fox)"
    )
    assert "line 3: no suggested_label" in relabel_error(tmp_path, "d/train/cat/2.jpg,label,cat,,0.2,\n")
    message = relabel_error(tmp_path, "d/train/dog/3.jpg,label,cat,fox,0.2,\n")
    assert "line 3: given_label 'cat' but the data labels d/train/dog/3.jpg 'dog'" in message
    message = relabel_error(tmp_path, "d/train/cat/1.jpg,label,cat,fox,0.2,\n")
    assert message.endswith(
        f"line 3: suggests 'fox' for d/train/cat/1.jpg, but {tmp_path / 'issues.csv'} line 2 suggested 'dog'"
    )


def test_writing_keeps_the_old_file_when_a_row_is_a_bug(tmp_path):
    path = tmp_path / "issues.csv"
    write_issues(ROWS, path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not an issue row"):
        write_issues([*ROWS, IssueRow("x.jpg", "label", float("inf"))], path)
    assert path.read_bytes() == before
