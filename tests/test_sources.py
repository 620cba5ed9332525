"""Every real-source adapter on small files written in its format, and the bad-record errors."""

import json

import pytest

from atp.data.records import DataError, read_jsonl, write_jsonl
from atp.data.sources import SourceSpec, load_source


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_gsm8k_aug_text(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("Tom has 3 bags of 4.||<<3*4=12>> <<12+1=13>> #### 13\nHow much?||<<2+2=4>> #### 4\n")
    records, skipped = load_source(SourceSpec(format="gsm8k_aug_text", path=str(path)), "train")
    assert skipped == 0
    assert records[0]["question"] == "Tom has 3 bags of 4."
    assert records[0]["steps"] == ["<<3*4=12>>", "<<12+1=13>>"]
    assert records[0]["answer"] == "13" and records[1]["answer"] == "4"
    assert records[0]["source"] == "gsm8k_aug_text"


def test_gsm8k_aug_dataset_form(tmp_path):
    path = _jsonl(tmp_path / "aug.jsonl", [{"question": "Q?", "cot": "<<1+2=3>> <<3*2=6>>", "answer": "6"}])
    (record,), _ = load_source(SourceSpec(format="gsm8k_aug", path=path), "train")
    assert record["steps"] == ["<<1+2=3>>", "<<3*2=6>>"] and record["answer"] == "6"


def test_gsm8k_original(tmp_path):
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether <<48+24=72>>72.\n#### 1,072"
    path = _jsonl(tmp_path / "test.jsonl", [{"question": "How many clips?", "answer": answer}])
    (record,), _ = load_source(SourceSpec(format="gsm8k", path=path), "test")
    assert record["steps"] == ["<<48/2=24>>", "<<48+24=72>>"]
    assert record["answer"] == "1072"


def test_gsm_hard(tmp_path):
    path = _jsonl(tmp_path / "hard.jsonl", [{"input": "Big numbers?", "code": "def solution(): return 2.0", "target": 123456.0}])
    (record,), _ = load_source(SourceSpec(format="gsm_hard", path=path), "hard")
    assert record == {**record, "question": "Big numbers?", "answer": "123456", "steps": []}


def test_svamp_json_list(tmp_path):
    path = tmp_path / "svamp.json"
    path.write_text(
        json.dumps([{"Body": "Jack had 8 pens", "Question": "How many now?", "Equation": "( 8.0 - 3.0 )", "Answer": 5.0}])
    )
    (record,), _ = load_source(SourceSpec(format="svamp", path=str(path)), "svamp")
    assert record["question"] == "Jack had 8 pens. How many now?"
    assert record["answer"] == "5" and record["equation"] == "( 8.0 - 3.0 )"


def test_multiarith(tmp_path):
    path = _jsonl(tmp_path / "ma.jsonl", [{"question": "2 and 3?", "final_ans": "5"}])
    (record,), _ = load_source(SourceSpec(format="multiarith", path=path), "ma")
    assert record["answer"] == "5" and record["steps"] == []


def test_coconut_json(tmp_path):
    path = tmp_path / "coconut.json"
    path.write_text(json.dumps([{"question": "Q", "steps": ["<<1+1=2>>", "2*3=6"], "answer": "6"}]))
    (record,), _ = load_source(SourceSpec(format="coconut", path=str(path)), "train")
    assert record["steps"] == ["<<1+1=2>>", "<<2*3=6>>"]


def test_contract_roundtrip(tmp_path):
    rows = [{"id": "a", "question": "Q", "steps": ["<<1+1=2>>"], "answer": "2", "source": "x"}]
    write_jsonl(tmp_path / "c.jsonl", rows)
    assert read_jsonl(tmp_path / "c.jsonl") == rows
    records, _ = load_source(SourceSpec(format="contract", path=str(tmp_path / "c.jsonl")), "train")
    assert records == rows


def test_hub_loading_code_on_a_local_dataset_folder(tmp_path):
    """The hub path (datasets.load_dataset) on a local folder in the hub's jsonl layout."""
    folder = tmp_path / "gsm8k_like"
    folder.mkdir()
    _jsonl(folder / "test.jsonl", [{"question": "Q?", "answer": "<<2+2=4>>4\n#### 4"}])
    records, _ = load_source(SourceSpec(format="gsm8k", hub_id=str(folder), hub_split="test"), "gsm8k")
    assert records[0]["answer"] == "4" and records[0]["steps"] == ["<<2+2=4>>"]


@pytest.mark.parametrize(
    ("fmt", "line", "problem"),
    [
        ("gsm8k", '{"question": "Q", "answer": "no hashes"}', "has no '#### answer'"),
        ("gsm8k", '{"question": "Q"}', "missing field 'answer'"),
        ("multiarith", '{"question": "Q", "final_ans": "many"}', "is not a number"),
        ("multiarith", '{"question": "  ", "final_ans": "3"}', "empty question"),
        ("gsm8k_aug", '{"question": "Q", "cot": "<<1+1=2>>", "answer": "2"', "invalid JSON"),
        ("contract", '{"id": "a", "question": "Q", "steps": ["1+1=2"], "answer": "2", "source": "x"}', "is not an equation"),
        ("contract", '{"id": "a", "question": "Q", "steps": [], "source": "x"}', "missing key(s) answer"),
    ],
)
def test_bad_record_names_file_and_line(tmp_path, fmt, line, problem):
    path = tmp_path / "bad.jsonl"
    good = '{"question": "Q", "final_ans": "1"}' if fmt == "multiarith" else None
    path.write_text((good + "\n" if good else "") + line + "\n")
    with pytest.raises(DataError) as error:
        load_source(SourceSpec(format=fmt, path=str(path)), "x")
    assert f"{path}:{2 if good else 1}" in str(error.value)
    assert problem in str(error.value)


def test_skip_bad_records_counts_them(tmp_path):
    path = tmp_path / "ma.jsonl"
    path.write_text('{"question": "A", "final_ans": "1"}\n{"question": "B", "final_ans": "x"}\n{"question": "C"}\n')
    records, skipped = load_source(SourceSpec(format="multiarith", path=str(path)), "ma", skip_bad=True)
    assert [r["question"] for r in records] == ["A"] and skipped == 2


def test_skip_bad_records_keeps_the_good_lines_around_invalid_json_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "aug.jsonl"
    good = lambda q: json.dumps({"question": q, "cot": "<<1+2=3>>", "answer": "3"})  # noqa: E731
    path.write_text(
        "\n".join([good("A"), '{"question": "broken', good("B"), "\ufeff" + good("C"), "not json at all", good("D")]) + "\n",
        encoding="utf-8",
    )
    records, skipped = load_source(SourceSpec(format="gsm8k_aug", path=str(path)), "train", skip_bad=True)
    assert [r["question"] for r in records] == ["A", "B", "D"] and skipped == 3
    with pytest.raises(DataError, match=rf"{path}:2.*invalid JSON"):
        load_source(SourceSpec(format="gsm8k_aug", path=str(path)), "train")


def test_records_of_a_json_list_are_named_by_the_line_they_start_on(tmp_path):
    path = tmp_path / "svamp.json"
    rows = [
        {"Body": "A has 3.", "Question": "How many?", "Equation": "( 3 + 0 )", "Answer": 3},
        {"Body": "B", "Question": "Q?", "Equation": "x", "Answer": "many"},
    ]
    path.write_text("[\n" + ",\n".join(json.dumps(r, indent=1) for r in rows) + "\n]\n")
    first_line_of_second = 2 + json.dumps(rows[0], indent=1).count("\n") + 1
    with pytest.raises(DataError, match=rf"{path}:{first_line_of_second}\b.*not a number"):
        load_source(SourceSpec(format="svamp", path=str(path)), "x")
    records, skipped = load_source(SourceSpec(format="svamp", path=str(path)), "x", skip_bad=True)
    assert len(records) == 1 and skipped == 1


def test_wrong_file_format_and_missing_file(tmp_path):
    path = tmp_path / "wrong.json"
    path.write_text('{"not": "a list"}')
    with pytest.raises(DataError, match="expected a JSON list"):
        load_source(SourceSpec(format="svamp", path=str(path)), "x")
    with pytest.raises(DataError, match="file not found"):
        load_source(SourceSpec(format="svamp", path=str(tmp_path / "nope.json")), "x")


def test_source_spec_checks():
    with pytest.raises(ValueError, match="unknown format"):
        SourceSpec(format="csv", path="x")
    with pytest.raises(ValueError, match="exactly one"):
        SourceSpec(format="gsm8k")


def test_hub_failure_names_the_dataset(tmp_path):
    with pytest.raises(DataError, match="could not load the dataset") as error:
        load_source(SourceSpec(format="gsm8k", hub_id=str(tmp_path / "missing"), hub_split="test"), "gsm8k")
    assert "missing:test" in str(error.value)


def test_an_empty_suite_is_named_by_its_full_config_key(tmp_path, capfd):
    from atp import cli, config
    from atp.stages import prepare_data

    bad = tmp_path / "gsm.jsonl"
    bad.write_text('{"question": "Q"}\n')
    job = config.resolve(
        {
            "data": {
                "skip_bad_records": True,
                "train": {"n": 20},
                "val": {"n": 5},
                "suites": {"gsm": {"source": "file", "format": "gsm8k", "path": str(bad)}},
            },
            "model": {"vocab_size": 64},
        }
    )
    config.dump(job, tmp_path / "job.yaml")
    parser = cli.parser("data")
    parser.add_argument("--out-dir", required=True)
    with pytest.raises(SystemExit) as exit_code:
        cli.run(
            prepare_data.main,
            parser,
            ["--config", str(tmp_path / "job.yaml"), "--out-dir", str(tmp_path / "out"), "--no-tracking"],
        )
    logged = "".join(capfd.readouterr())
    assert exit_code.value.code == 2 and "config key 'data.suites.gsm'" in logged and "the split is empty" in logged
    assert not (tmp_path / "out").exists()
