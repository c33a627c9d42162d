"""Which slides exist and which a task uses: the one rule the workflow (at parse time) and the
commands follow (pipeline.cohort), and the method order both train in (pipeline.methods)."""

from __future__ import annotations

import os

import pytest

from pipeline.cohort import discover_slides, survival_record, task_slides
from pipeline.errors import ConfigError, TableError
from pipeline.methods import base_method, default_reference, teacher_of, training_order


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return str(path)


def test_discovery_recurses_skips_hidden_and_other_files_and_groups_dicom(tmp_path):
    a = touch(tmp_path / "a.svs")
    b = touch(tmp_path / "gdc" / "uuid1" / "b.NDPI")  # suffixes in any case
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".hidden" / "c.svs")
    touch(tmp_path / ".d.svs")
    first = touch(tmp_path / "dicom_slide" / "0001.dcm")
    touch(tmp_path / "dicom_slide" / "0002.dcm")
    e = touch(tmp_path / "e\u0308.svs")  # 'e' + combining diaeresis (macOS file name)
    found = discover_slides(tmp_path, [".svs", ".ndpi", ".dcm"])
    assert found == {"a": a, "b": b, "dicom_slide": first, "\u00eb": e}
    assert list(found) == sorted(found)


def test_discovery_walks_a_symlink_loop_once(tmp_path):
    a = touch(tmp_path / "s" / "a.svs")
    os.symlink(tmp_path / "s", tmp_path / "s" / "loop", target_is_directory=True)
    assert discover_slides(tmp_path / "s", [".svs"]) == {"a": a}


@pytest.mark.parametrize(
    ("files", "text"),
    [
        (["a.svs", "x/a.ndpi"], "two slides have the same id (file stem)"),
        (["b{1}.svs"], "which Snakemake cannot use in output paths"),
        (["notes.txt"], "no slides found (looked for .ndpi, .svs)"),
    ],
)
def test_discovery_refuses_ids_that_would_collide_or_break_paths(tmp_path, files, text):
    for f in files:
        touch(tmp_path / f)
    with pytest.raises(ConfigError) as caught:
        discover_slides(tmp_path, [".svs", ".ndpi"])
    line = caught.value.line()
    assert text in line and "\n" not in line
    if len(files) == 2:
        assert f"{tmp_path / 'a.svs'} and {tmp_path / 'x' / 'a.ndpi'}" in line


def test_discovery_of_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        discover_slides(tmp_path / "nope", [".svs"])


@pytest.mark.parametrize(
    ("time", "event", "record"),
    [
        ("5", "1", (5.0, 1)),
        ("0", "0", (0.0, 0)),
        ("12.5", " True", (12.5, 1)),
        (3, 0.0, (3.0, 0)),
        ("", "1", None),
        ("-1", "1", None),
        ("nan", "0", None),
        ("4", "2", None),
        ("4", "maybe", None),
    ],
)
def test_survival_record(time, event, record):
    assert survival_record(time, event) == record


def write(path, text):
    path.write_text(text)
    return path


def test_classification_uses_labelled_slides_and_refuses_a_slide_twice(tmp_path):
    table = write(tmp_path / "l.csv", "slide_id,case_id,label\ns1,c1,a\ns2,,b\ns3,c3,\ns4,c1,b\n")
    chosen = task_slides("classification", table)
    assert chosen.cases == {"s1": "c1", "s2": "s2", "s4": "c1"}
    assert chosen.notes == (f"slide s3: empty label in {table}; left out",)
    twice = write(tmp_path / "t.csv", "slide_id,label\ns1,a\ns1,b\n")
    with pytest.raises(TableError, match="slide s1 is listed twice"):
        task_slides("classification", twice)


def test_survival_maps_slides_to_cases_with_a_valid_record(tmp_path):
    surv = write(tmp_path / "s.csv", "case_id,time,event\nc1,5,1\nc2,,1\nc3,7,0\n")
    slides = write(tmp_path / "m.csv", "slide_id,case_id\na,c1\nb,c1\nc,c2\nd,c3\ne,c9\na,c3\n")
    chosen = task_slides("survival", surv, slides)
    assert chosen.cases == {"a": "c1", "b": "c1", "d": "c3"}
    assert chosen.notes == (
        f"case c2: time/event missing or invalid in {surv} (time >= 0, event 0/1); left out",
        "slide c: case c2 has no survival record; left out",
        "slide e: case c9 has no survival record; left out",
    )
    # without a slides table: the table's own slide_id column (one row per slide), else case ids
    own = write(tmp_path / "o.csv", "slide_id,case_id,time,event\na,c1,5,1\nb,c1,5,1\nc,c2,x,1\n")
    assert task_slides("survival", own).cases == {"a": "c1", "b": "c1"}
    assert task_slides("survival", surv).cases == {"c1": "c1", "c3": "c3"}


def test_the_commands_use_the_slides_the_workflow_embeds(tmp_path):
    """The task the commands build wants exactly the slides pipeline.cohort gives the workflow
    (the task hands its cleaned rows to cohort.choose_slides: this checks that hand-over)."""
    from pipeline.mil.tasks import build_task

    labels = write(tmp_path / "l.csv", "slide_id,case_id,label\ns1,c1,a\ns2,,b\ns3,c3,\n")
    surv = write(tmp_path / "s.csv", "case_id,time,event\nc1,5,1\nc2,-3,1\nc3,7,true\n")
    slides = write(tmp_path / "m.csv", "slide_id,case_id\na,c1\nb,c2\nd,c3\ne,c9\n")
    own = write(tmp_path / "o.csv", "slide_id,case_id,time,event\na,c1,5,1\nb,c1,5,1\nc,c2,x,1\n")
    for kind, table, mapping in [
        ("classification", labels, None),
        ("survival", surv, slides),
        ("survival", own, None),
        ("survival", surv, None),
    ]:
        wanted = build_task(kind, table, mapping).wanted_slides()
        assert wanted == task_slides(kind, table, mapping).slide_ids, (kind, table, mapping)


VARIANTS = {"mhim_abmil_nogrn": {"method": "mhim_abmil", "mhim": {"grn": False}}}


def test_base_method_teacher_and_training_order():
    assert base_method("mhim_abmil_nogrn", VARIANTS) == "mhim_abmil"
    assert base_method("transmil", VARIANTS) == "transmil"
    assert teacher_of("mhim_abmil_nogrn", VARIANTS) == "abmil"  # its base method's teacher
    assert teacher_of("abmil", VARIANTS) is None
    # the workflow: teachers first, the reference, then the methods, each once
    methods = ["mhim_transmil", "mhim_abmil", "mhim_abmil_nogrn"]
    assert training_order(methods, VARIANTS, "transmil") == [
        "transmil",
        "abmil",
        "mhim_transmil",
        "mhim_abmil",
        "mhim_abmil_nogrn",
    ]
    # wsi-mil cv: one method and its comparison, the reference's teacher included
    assert training_order(["mhim_abmil"], VARIANTS, "mhim_transmil") == [
        "abmil",
        "transmil",
        "mhim_transmil",
        "mhim_abmil",
    ]
    assert training_order(["abmil"], VARIANTS, None) == ["abmil"]
    # the default reference of a run of one MHIM method (or variant) is its baseline
    assert default_reference(["mhim_abmil_nogrn"], VARIANTS) == "abmil"
    assert default_reference(["meanpool", "mhim_abmil", "abmil"], VARIANTS) == "abmil"
