"""A replay injects saved profiles as they are (stored ratings / R, times R) and refuses files of another data
set or target set in one line naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import UserError
from models.recsys.file_attack import FileAttack, attack_from_file_name, read_profiles

TARGETS = torch.tensor([1, 4])


def write_profiles(folder: Path, name: str, values: np.ndarray) -> Path:
    """A file as the TCD reference saves it: np.save of a float64 [fake users, items] array of ratings / R."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / name, values.astype(np.float64))
    return folder / name


def reference_like() -> np.ndarray:
    """3 fake users x 6 items on a 1..5 grid: fillers rated 0.2..0.8, both targets rated 1.0, 0 = unrated."""
    values = np.zeros((3, 6))
    values[:, [1, 4]] = 1.0
    values[0, 0], values[1, 2], values[2, [3, 5]] = 0.6, 0.2, [0.8, 0.4]
    return values


def test_profiles_are_the_stored_values_times_r(tmp_path: Path) -> None:
    path = write_profiles(tmp_path, "aush_poisoning_1_3_0.400000.npy", reference_like())
    fake = read_profiles(path, 6, TARGETS, 5.0)
    assert fake.dtype == torch.float32 and fake.shape == (3, 6)
    assert fake.tolist() == [[3, 5, 0, 0, 5, 0], [0, 5, 1, 0, 5, 0], [0, 5, 0, 4, 5, 2]]


def test_generate_returns_the_files_first_rows_and_draws_nothing(tmp_path: Path) -> None:
    write_profiles(tmp_path / "poison", "PGA_poisoning_1_3_0.400000.npy", reference_like())
    attack = FileAttack(path="poison/PGA_poisoning_1_3_0.400000.npy", root=str(tmp_path))
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    fake = attack.generate(torch.zeros(10, 6), TARGETS, 2, 0, 5.0, generator)
    assert fake.tolist() == (torch.as_tensor(reference_like()[:2]) * 5).tolist()
    assert torch.equal(generator.get_state(), state)
    assert FileAttack(path=str(tmp_path / "poison" / "PGA_poisoning_1_3_0.400000.npy"), root="/elsewhere").file.is_file()


@pytest.mark.parametrize(
    "name, label, expected",
    [
        ("PGA_poisoning_1018_28_0.400000.npy", None, "pga"),
        ("TNA_poisoning_1485_18_0.400000.npy", None, "tna"),
        ("aush_poisoning_1485_28_0.400000.npy", None, "aush"),
        ("random_poisoning_1018_18_0.400000.npy", "random_18", "random_18"),  # a label wins over the name
        ("my_profiles.npy", "mine", "mine"),
    ],
)
def test_the_condition_is_named_by_the_files_attack_or_the_label(name: str, label: str | None, expected: str) -> None:
    assert FileAttack(path=name, label=label).attack_name == expected


def test_a_file_name_without_an_attack_asks_for_a_label() -> None:
    assert attack_from_file_name(Path("profiles.npy")) is None
    with pytest.raises(UserError, match=r"attack.path=profiles.npy: the attack cannot be read .* attack.label=<name>"):
        _ = FileAttack(path="profiles.npy").attack_name
    with pytest.raises(UserError, match=r"attack=file needs attack.path="):
        _ = FileAttack().file


def partly_rated_target() -> np.ndarray:
    """The other target set's items are often fillers of some profiles: a target rated by 2 of 3 profiles."""
    values = reference_like()
    values[2, 1] = 0.0
    return values


@pytest.mark.parametrize(
    "values, message",
    [
        (np.hstack([reference_like(), np.zeros((3, 1))]), r"7 item columns, the data set has 6 items"),
        (np.where(reference_like() == 0.8, 4.0, reference_like()), r"value 4 at \(profile 2, item 3\) is outside \[0, 1\]"),
        (np.where(reference_like() == 0.2, -0.2, reference_like()), r"value -0.2 at \(profile 1, item 2\) is outside"),
        (np.where(reference_like() == 0.2, np.nan, reference_like()), r"value nan at \(profile 1, item 2\) is outside"),
        (np.where(np.arange(6) == 4, 0.0, reference_like()), r"target item\(s\) \[4\] of task.targets \[1, 4\] are not rated"),
        (
            partly_rated_target(),
            r"target item\(s\) \[1\] of task.targets \[1, 4\] are not rated by every profile \(unrated in 1 of 3\)",
        ),
        (np.zeros(6), r"expected a numeric \[fake users, items\] array, found shape \(6,\)"),
    ],
)
def test_a_file_that_cannot_be_these_profiles_is_one_line_naming_it(tmp_path: Path, values: np.ndarray, message: str) -> None:
    path = write_profiles(tmp_path, "average_poisoning_1_3_0.400000.npy", values)
    with pytest.raises(UserError, match=message) as error:
        read_profiles(path, 6, TARGETS, 5.0)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_a_missing_or_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"attack.path: .*nothing.npy is not a file"):
        read_profiles(tmp_path / "nothing.npy", 6, TARGETS, 5.0)
    (tmp_path / "text.npy").write_text("1 2 3\n")
    with pytest.raises(UserError, match=r"text.npy: not a numpy .npy array"):
        read_profiles(tmp_path / "text.npy", 6, TARGETS, 5.0)
