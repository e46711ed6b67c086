"""Bad readings files through the real pipeline (`streaming.runner.run`, in process).

The checked-in corpus `tests/bad_inputs/` (see its EXPECTED.md) goes through one
available-now run beside four good generated files; each test then checks one
outcome on the tables that run left. Further runs, each in its own folder, check
the `warn`, `drop` and `fail` expectation actions, a fixed copy of a quarantined
file replayed on the same checkpoint, and rows that crash the parser.

Spark work is kept to six short runs: the module fixtures run once and keep a
snapshot of the tables they produced.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, read_tables
from pyspark.sql import SparkSession
from reference import (
    TABLE_KEYS,
    FileDelivery,
    assert_tables_match,
    expected_staging,
    expected_tables,
    load_deliveries,
    reconciliation_errors,
)

from streaming import runner, sinks
from streaming.batch import Pipeline
from streaming.config import Config
from streaming.expectations import DEFAULTS
from streaming.generator import SampleSpec, meterpoint_ids, write_readings_file, write_sample
from streaming.parsing import parse_readings

TZ = "Europe/London"
CORPUS = Path(__file__).resolve().parent / "bad_inputs"
# seed 42, 4 meterpoints: the ids the corpus uses (all in the sample's meterpoint table)
SPEC = SampleSpec(meterpoints=4, days=1)
MP_A, MP_B, MP_C, MP_D = "228e516936", "f5fc17597d", "92002a5c9a", "600c4dfcb2"
COLUMNS = ["interval_start", "consumption_delta", "meterpoint_id"]
STAGING = "staging/readings"
RAW = "raw/readings"
Q_FILES = "quarantine/files"
Q_ROWS = "quarantine/readings"
ALL_TABLES = [RAW, Q_FILES, Q_ROWS, *TABLE_KEYS]
Tables = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class BadFile:
    """A file rejected as a whole: one `quarantine/files` row with this reason code."""

    code: str


@dataclass(frozen=True)
class MixedRows:
    """A structurally valid file: `good` rows staged, `bad` rows (index -> code) quarantined."""

    rows: int
    bad: dict[int, str]

    @property
    def good(self) -> int:
        return self.rows - len(self.bad)


EXPECTED: dict[str, BadFile | MixedRows] = {
    "file_not_json.json": BadFile("invalid_json"),
    "file_truncated_json.json": BadFile("invalid_json"),
    "file_empty_0_bytes.json": BadFile("empty_file"),
    "file_json_array_top_level.json": BadFile("not_an_object"),
    "file_json_null.json": BadFile("not_an_object"),
    "file_object_without_columns.json": BadFile("missing_key"),
    "file_object_without_data.json": BadFile("missing_key"),
    "file_columns_is_a_string.json": BadFile("bad_columns"),
    "file_columns_not_strings.json": BadFile("bad_columns"),
    "file_required_column_missing.json": BadFile("missing_column"),
    "file_data_rows_not_lists.json": BadFile("bad_row"),
    "file_data_not_a_list.json": BadFile("bad_data"),
    "rows_wrong_number_of_values.json": MixedRows(6, {1: "wrong_width", 3: "wrong_width", 4: "wrong_width"}),
    "rows_consumption_text_boolean_null.json": MixedRows(
        6, {1: "bad_consumption", 2: "bad_consumption", 3: "bad_consumption"}
    ),
    "rows_consumption_negative_nan_infinity.json": MixedRows(
        7, {1: "negative_consumption", 2: "bad_consumption", 3: "bad_consumption", 4: "bad_consumption"}
    ),
    "rows_interval_start_null_unparseable_off_half_hour.json": MixedRows(
        6, {1: "bad_interval_start", 2: "bad_interval_start", 3: "not_half_hour", 4: "not_half_hour"}
    ),
    "rows_interval_start_spring_forward_gap.json": MixedRows(
        4, {1: "nonexistent_local_time", 2: "nonexistent_local_time"}
    ),
    "rows_meterpoint_null_or_empty.json": MixedRows(4, {1: "bad_meterpoint", 2: "bad_meterpoint"}),
}
BAD_FILES = {name: e.code for name, e in EXPECTED.items() if isinstance(e, BadFile)}
MIXED = {name: e for name, e in EXPECTED.items() if isinstance(e, MixedRows)}


# ---------------------------------------------------------------- helpers


def name_of(source_file: str) -> str:
    """`file:/tmp/.../readings/x.json` -> `x.json`."""
    return source_file.rstrip("/").rsplit("/", 1)[-1]


def code_of(reason: str) -> str:
    return reason.split(":", 1)[0]


class _Text(str):
    """A JSON number or NaN/Infinity literal kept as its source text."""


def delivered_text(value: Any) -> str | None:
    """A cell as the raw layer keeps it: strings as they are, numbers and literals as written."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def delivered_rows(path: Path) -> list[tuple[str | None, ...]]:
    """A file's rows as (interval_start, consumption_delta, meterpoint_id) texts, by column name."""
    doc = json.loads(path.read_bytes(), parse_float=_Text, parse_int=_Text, parse_constant=_Text)
    columns = doc["columns"]
    out = []
    for row in doc["data"]:
        cells = dict(zip(columns, row, strict=False))
        out.append(tuple(delivered_text(cells.get(c)) for c in COLUMNS))
    return out


def make_sample(tmp: Path) -> tuple[Path, list[Path]]:
    """The generator's 4 meterpoint x 1 day sample: its database and its four regular files."""
    write_sample(tmp / "sample", SPEC)
    regular = sorted((tmp / "sample" / "readings").glob("readings_2021-01-01_*.json"))
    assert len(regular) == 4
    return tmp / "sample" / "case_study.db", regular


def copy_in(files: list[Path], readings: Path) -> None:
    readings.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, readings / f.name)


def run_pipeline(spark: SparkSession, cfg: Config) -> Pipeline:
    pipeline = runner.run(cfg, spark=spark)
    assert isinstance(pipeline, Pipeline)
    return pipeline


@dataclass
class Run:
    cfg: Config
    readings: Path
    db: Path
    pipeline: Pipeline
    deliveries: list[FileDelivery]
    tables: Tables
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- the corpus, without Spark


def test_corpus_folder_and_expectations_list_the_same_files() -> None:
    on_disk = {p.name for p in CORPUS.iterdir() if p.suffix == ".json"}
    assert on_disk == set(EXPECTED)
    assert {p.name for p in CORPUS.iterdir()} - on_disk == {"EXPECTED.md"}
    listed = (CORPUS / "EXPECTED.md").read_text()
    assert [name for name in EXPECTED if f"`{name}`" not in listed] == []
    assert (CORPUS / "file_empty_0_bytes.json").stat().st_size == 0


def test_corpus_meterpoints_are_the_generated_sample_ones() -> None:
    assert set(meterpoint_ids(SPEC.meterpoints, SPEC.seed)) == {MP_A, MP_B, MP_C, MP_D}
    used = set()
    for name in MIXED:
        used |= {r[2] for r in delivered_rows(CORPUS / name) if r[2]}
    assert used == {MP_A, MP_B, MP_C, MP_D}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parser_gives_each_corpus_file_its_expected_reason_codes(name: str) -> None:
    parsed = parse_readings((CORPUS / name).read_bytes(), TZ)
    expected = EXPECTED[name]
    if isinstance(expected, BadFile):
        assert parsed.error is not None and code_of(parsed.error) == expected.code, parsed.error
        assert parsed.reason == []
    else:
        assert parsed.error is None
        codes = {i: code_of(r) for i, r in enumerate(parsed.reason) if r is not None}
        assert (len(parsed.reason), codes) == (expected.rows, expected.bad), parsed.reason


# ---------------------------------------------------------------- the corpus, end to end


@pytest.fixture(scope="module")
def corpus(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One available-now run over the corpus and four good files; tables kept as a snapshot."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    db, good = make_sample(tmp)
    readings = tmp / "readings"
    copy_in([*good, *sorted(CORPUS.glob("*.json"))], readings)
    cfg = make_config(tmp, readings=readings, db=db)
    pipeline = run_pipeline(spark, cfg)
    return Run(
        cfg,
        readings,
        db,
        pipeline,
        load_deliveries([readings]),
        read_tables(spark, cfg.lake, ALL_TABLES),
        {"good": [g.name for g in good]},
    )


def test_bad_inputs_leave_staging_and_presentation_equal_to_the_reference(corpus: Run) -> None:
    expected = expected_tables(expected_staging([corpus.deliveries], TZ), corpus.db)
    good_rows = sum(
        len(json.loads(f.read_bytes())["data"]) for f in (corpus.readings / n for n in corpus.extra["good"])
    )
    assert len(expected[STAGING]) == good_rows + sum(m.good for m in MIXED.values())
    assert_tables_match(corpus.tables, expected, TABLE_KEYS)


def test_staging_holds_no_row_of_a_bad_file_and_only_the_good_rows_of_mixed_files(corpus: Run) -> None:
    staged = Counter(name_of(r["source_file"]) for r in corpus.tables[STAGING])
    assert {n: staged[n] for n in EXPECTED} == {
        n: (e.good if isinstance(e, MixedRows) else 0) for n, e in EXPECTED.items()
    }


def test_every_bad_file_is_quarantined_once_with_its_reason_code(corpus: Run) -> None:
    quarantined = sorted((name_of(r["source_file"]), code_of(r["reason"])) for r in corpus.tables[Q_FILES])
    assert quarantined == sorted(BAD_FILES.items())
    assert all(r["ingested_at"] is not None for r in corpus.tables[Q_FILES])


def test_every_bad_row_is_quarantined_with_its_code_and_source_file(corpus: Run) -> None:
    quarantined = sorted(
        (name_of(r["source_file"]), r["row_index"], code_of(r["reason"])) for r in corpus.tables[Q_ROWS]
    )
    expected = sorted((name, i, code) for name, e in MIXED.items() for i, code in e.bad.items())
    assert quarantined == expected


def test_quarantined_rows_keep_the_values_as_delivered(corpus: Run) -> None:
    by_key = {(name_of(r["source_file"]), r["row_index"]): r for r in corpus.tables[Q_ROWS]}
    for name, e in MIXED.items():
        rows = delivered_rows(CORPUS / name)
        for i in e.bad:
            q = by_key[(name, i)]
            assert (q["interval_start"], q["consumption_delta"], q["meterpoint_id"]) == rows[i], (name, i)
    nan = by_key[("rows_consumption_negative_nan_infinity.json", 2)]
    assert nan["consumption_delta"] == "NaN"
    assert json.loads(nan["row"])[1] != json.loads(nan["row"])[1]  # the row text keeps NaN


def test_raw_layer_holds_every_delivered_row_of_the_structurally_valid_files(corpus: Run) -> None:
    raw: dict[str, list[tuple[str | None, ...]]] = {}
    for r in corpus.tables[RAW]:
        raw.setdefault(name_of(r["source_file"]), []).append(
            (r["interval_start"], r["consumption_delta"], r["meterpoint_id"])
        )
    valid = [*MIXED, *corpus.extra["good"]]
    assert set(raw) == set(valid), "rows of a rejected file reached raw/readings"
    for name in valid:
        assert sorted(raw[name], key=repr) == sorted(delivered_rows(corpus.readings / name), key=repr), name
    assert all(r["batch_id"] is not None and r["ingested_at"] is not None for r in corpus.tables[RAW])


def test_reconciliation_holds_with_bad_inputs(corpus: Run) -> None:
    assert corpus.tables["presentation/total_consumption_half_hour"], "nothing to reconcile"
    assert reconciliation_errors(corpus.tables) == []


def test_batch_log_counts_quarantined_rows_by_reason(corpus: Run) -> None:
    logged: Counter[str] = Counter()
    for batch in corpus.pipeline.batches:
        logged.update(batch.get("quarantined_by_reason", {}))
    expected_rows = Counter(code for e in MIXED.values() for code in e.bad.values())
    assert {c: logged[c] for c in expected_rows} == dict(expected_rows)
    assert sum(b["rows_quarantined"] for b in corpus.pipeline.batches) == sum(expected_rows.values())


# ---------------------------------------------------------------- replay after a fix


def test_fixed_copy_of_a_quarantined_file_lands_in_staging_on_the_next_run(
    spark: SparkSession, corpus: Run
) -> None:
    """A corrected copy under a new name, second run on the same checkpoint."""
    fixed_truncated = write_readings_file(
        corpus.readings / "fixed_file_truncated_json.json",
        [["2021-01-02 00:00:00", 0.21, MP_A], ["2021-01-02 00:30:00", 0.22, MP_A]],
    )
    mixed = json.loads((CORPUS / "rows_consumption_negative_nan_infinity.json").read_bytes())
    rows = mixed["data"]
    for i, kwh in zip(
        MIXED["rows_consumption_negative_nan_infinity.json"].bad, (0.5, 0.6, 0.7, 0.8), strict=True
    ):
        rows[i][1] = kwh
    fixed_rows = write_readings_file(corpus.readings / "fixed_rows_consumption.json", rows)
    second = load_deliveries([fixed_truncated, fixed_rows])

    pipeline = run_pipeline(spark, corpus.cfg)

    assert [b["files"] for b in pipeline.batches] == [2]
    tables = read_tables(spark, corpus.cfg.lake, ALL_TABLES)
    expected = expected_tables(expected_staging([corpus.deliveries, second], TZ), corpus.db)
    assert_tables_match(tables, expected, TABLE_KEYS)
    assert reconciliation_errors(tables) == []
    staged = {
        (r["meterpoint_id"], r["interval_start_local"].strftime("%H:%M")): r
        for r in tables[STAGING]
        if r["reading_date"].isoformat() == "2021-01-02"
    }
    # the rows that were quarantined (or whose file was) are staged now, from the fixed files
    assert staged[(MP_A, "00:30")]["consumption_kwh"] == 0.22
    assert name_of(staged[(MP_A, "00:30")]["source_file"]) == fixed_truncated.name
    for slot, kwh in (("00:30", 0.5), ("01:00", 0.6), ("01:30", 0.7), ("02:00", 0.8)):
        assert staged[(MP_C, slot)]["consumption_kwh"] == kwh
        assert name_of(staged[(MP_C, slot)]["source_file"]) == fixed_rows.name
    # the quarantine keeps its history and gains nothing from the fixed files
    assert sorted(map(repr, tables[Q_FILES])) == sorted(map(repr, corpus.tables[Q_FILES]))
    assert sorted(map(repr, tables[Q_ROWS])) == sorted(map(repr, corpus.tables[Q_ROWS]))


# ---------------------------------------------------------------- warn and drop


@pytest.fixture(scope="module")
def rules(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One run with a low ceiling for `plausible_consumption` (warn) and `not_in_future`,
    `known_meterpoint` set to drop."""
    tmp = tmp_path_factory.mktemp("rules")
    db, good = make_sample(tmp)
    readings = tmp / "readings"
    copy_in(good[:1], readings)
    write_readings_file(
        readings / "future_reading.json",
        [
            ["2099-01-01 00:00:00", 0.2, MP_A],
            ["2099-01-01 00:30:00", 0.9, MP_A],  # above the ceiling too, but dropped: no warning
            ["2021-01-02 00:00:00", 0.2, MP_A],
        ],
    )
    write_readings_file(
        readings / "unknown_meterpoint.json",
        [["2021-01-02 00:00:00", 0.3, "ffffffffff"], ["2021-01-02 00:30:00", 0.3, MP_B]],
    )
    expectations = {
        **DEFAULTS,
        "plausible_consumption": "warn",
        "not_in_future": "drop",
        "known_meterpoint": "drop",
        "max_kwh_per_half_hour": "0.5",
    }
    cfg = make_config(tmp, readings=readings, db=db, expectations=expectations)
    pipeline = run_pipeline(spark, cfg)
    above = [r for r in json.loads(good[0].read_bytes())["data"] if float(r[1]) > 0.5]
    return Run(
        cfg,
        readings,
        db,
        pipeline,
        load_deliveries([readings]),
        read_tables(spark, cfg.lake, ALL_TABLES),
        {"good": good[0].name, "above": above},
    )


def test_warn_keeps_rows_above_the_ceiling_in_staging_and_counts_them_in_the_batch_log(rules: Run) -> None:
    above = rules.extra["above"]
    assert above, "the sample has no reading above the ceiling: lower it"
    staged = {
        (r["meterpoint_id"], r["interval_start_local"].strftime("%Y-%m-%d %H:%M:%S")): r
        for r in rules.tables[STAGING]
    }
    for ts, kwh, mp in above:
        assert staged[(mp, ts)]["consumption_kwh"] == pytest.approx(float(kwh))
    assert rules.pipeline.batches[-1].get("warnings") == {"plausible_consumption": len(above)}
    assert not [r for r in rules.tables[Q_ROWS] if code_of(r["reason"]) == "plausible_consumption"]


def test_drop_quarantines_a_reading_in_the_future(rules: Run) -> None:
    future = sorted(
        (r["row_index"], code_of(r["reason"]))
        for r in rules.tables[Q_ROWS]
        if name_of(r["source_file"]) == "future_reading.json"
    )
    assert future == [(0, "not_in_future"), (1, "not_in_future")]
    assert not [r for r in rules.tables[STAGING] if r["reading_date"].year == 2099]
    assert [
        r["consumption_kwh"]
        for r in rules.tables[STAGING]
        if name_of(r["source_file"]) == "future_reading.json"
    ] == [0.2]


def test_drop_quarantines_an_unknown_meterpoint(rules: Run) -> None:
    unknown = [
        (r["row_index"], r["meterpoint_id"], code_of(r["reason"]))
        for r in rules.tables[Q_ROWS]
        if name_of(r["source_file"]) == "unknown_meterpoint.json"
    ]
    assert unknown == [(0, "ffffffffff", "known_meterpoint")]
    assert "ffffffffff" not in {r["meterpoint_id"] for r in rules.tables[STAGING]}
    assert [
        r["meterpoint_id"]
        for r in rules.tables[STAGING]
        if name_of(r["source_file"]) == "unknown_meterpoint.json"
    ] == [MP_B]


def test_dropped_rows_are_the_only_rows_missing_from_staging_and_presentation(rules: Run) -> None:
    kept = {
        key: reading
        for key, reading in expected_staging([rules.deliveries], TZ).items()
        if reading.instant.year != 2099 and reading.meterpoint_id != "ffffffffff"
    }
    assert_tables_match(rules.tables, expected_tables(kept, rules.db), TABLE_KEYS)
    assert reconciliation_errors(rules.tables) == []
    assert rules.tables[Q_FILES] == []


# ---------------------------------------------------------------- fail


@dataclass
class FailedRun:
    error: BaseException | None
    tables: Tables


@pytest.fixture(scope="module")
def failed(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> FailedRun:
    """A run with `valid_consumption = "fail"` over a good file and one negative reading."""
    tmp = tmp_path_factory.mktemp("fail")
    db, good = make_sample(tmp)
    readings = tmp / "readings"
    copy_in(good[:1], readings)
    write_readings_file(
        readings / "negative.json",
        [
            ["2021-01-02 00:00:00", 0.2, MP_A],
            ["2021-01-02 00:30:00", -0.5, MP_A],
            ["2021-01-02 01:00:00", 0.2, MP_A],
        ],
    )
    cfg = make_config(tmp, readings=readings, db=db, expectations={**DEFAULTS, "valid_consumption": "fail"})
    error: BaseException | None = None
    try:
        runner.run(cfg, spark=spark)
    except Exception as exc:  # the tests below say which type it must be
        error = exc
    return FailedRun(error, read_tables(spark, cfg.lake, [STAGING, RAW, Q_FILES, Q_ROWS]))


def test_fail_expectation_raises_pipeline_error_naming_the_reason_file_and_row(failed: FailedRun) -> None:
    assert failed.error is not None, "the run returned normally"
    assert isinstance(failed.error, runner.PipelineError), (
        f"{type(failed.error).__module__}.{type(failed.error).__name__} instead of PipelineError"
    )
    message = str(failed.error)
    assert "negative_consumption" in message
    assert "negative.json row 1" in message


def test_fail_expectation_writes_nothing_for_the_batch(failed: FailedRun) -> None:
    assert failed.error is not None, "the run returned normally"
    assert {name: len(rows) for name, rows in failed.tables.items()} == {
        STAGING: 0,
        RAW: 0,
        Q_FILES: 0,
        Q_ROWS: 0,
    }


# ---------------------------------------------------------------- rows that crash the parser


def test_rows_that_crash_the_parser_are_quarantined_and_the_run_goes_on(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Each of these rows makes `parse_readings` raise inside the executors, which fails the
    query for good (every restart replays the batch): a bad row must be quarantined instead."""
    db, good = make_sample(tmp_path)
    readings = tmp_path / "readings"
    copy_in(good[:1], readings)
    crashers = {
        # a list as meterpoint_id with an ambiguous fall-back wall time: TypeError (unhashable)
        "meterpoint_list_on_fall_back.json": (["2021-10-31 01:00:00", 0.1, [MP_A]], "bad_meterpoint"),
        # an offset timestamp whose instant is past year 9999: OverflowError
        "offset_past_year_9999.json": (["9999-12-31 23:30:00-05:00", 0.1, MP_A], "bad_interval_start"),
    }
    for hour, (name, (row, _code)) in enumerate(crashers.items()):
        # a good row of its own in each file (one reading per key: no file supersedes another)
        write_readings_file(readings / name, [[f"2021-01-02 0{hour}:00:00", 0.3, MP_A], row])
    # a value nested 500 deep: json.loads accepts it, turning it back into text recursed too deep
    nested = "[" * 500 + "]" * 500
    (readings / "deeply_nested_value.json").write_text(
        json.dumps({"columns": COLUMNS, "data": [["2021-01-02 00:30:00", 0.3, MP_B]]})[:-2]
        + f', ["2021-01-02 01:00:00", {nested}, "{MP_B}"]]}}'
    )
    cfg = make_config(tmp_path, readings=readings, db=db)

    run_pipeline(spark, cfg)

    tables = read_tables(spark, cfg.lake, [STAGING, Q_FILES, Q_ROWS])
    rows = {(name_of(r["source_file"]), r["row_index"]): code_of(r["reason"]) for r in tables[Q_ROWS]}
    files = {name_of(r["source_file"]): code_of(r["reason"]) for r in tables[Q_FILES]}
    for name, (_row, code) in crashers.items():
        assert rows.get((name, 1)) == code, name
    assert (
        rows.get(("deeply_nested_value.json", 1)) == "bad_consumption"
        or files.get("deeply_nested_value.json") == "invalid_json"
    )
    staged = Counter(name_of(r["source_file"]) for r in tables[STAGING])
    assert staged[good[0].name] == 48
    assert staged["meterpoint_list_on_fall_back.json"] == staged["offset_past_year_9999.json"] == 1


# ---------------------------------------------------------------- extra columns alike in Delta


def _extra_column_file(path: Path, column: str, hour: int, value: str) -> None:
    path.write_text(
        json.dumps(
            {"columns": [*COLUMNS, column], "data": [[f"2021-01-02 {hour:02d}:00:00", 0.5, MP_A, value]]}
        )
    )


@pytest.mark.parametrize("writer", ["auto", "spark"])
def test_extra_columns_that_are_one_name_to_delta_each_keep_a_raw_column(
    spark: SparkSession, tmp_path: Path, writer: str
) -> None:
    """Delta matches column names in any letter case, and `raw_column_name` makes
    `a b` into `a_b`: such extra columns in one batch made the raw append fail
    with every replay, so the pipeline stopped for good. Each now keeps a column
    of its own (`sinks.raw_column_names`); a later batch's `QUALITY` alone goes
    into the existing `Quality` column."""
    db, regular = make_sample(tmp_path)
    readings = tmp_path / "readings"
    copy_in(regular, readings)
    extras = {
        "k1.json": ("Quality", "x"),
        "k2.json": ("quality", "y"),
        "k3.json": ("Interval_Start", "z"),
        "k4.json": ("a b", "p"),
        "k5.json": ("a_b", "q"),
        "k6.json": ("Source_File", "s"),
    }
    for hour, (name, (column, value)) in enumerate(extras.items()):
        _extra_column_file(readings / name, column, hour, value)
    cfg = make_config(tmp_path, readings=readings, db=db, small_writes=writer)
    run_pipeline(spark, cfg)
    _extra_column_file(readings / "k7.json", "QUALITY", 8, "w")
    second = run_pipeline(spark, cfg)
    assert [b["rows"] for b in second.batches] == [1]

    tables = read_tables(spark, cfg.lake, [RAW, STAGING])
    columns = sinks.raw_column_names([*COLUMNS, *(c for c, _ in extras.values())])
    assert len({c.lower() for c in columns.values()}) == len(columns) == 9
    by_file = {name_of(r["source_file"]): r for r in tables[RAW]}
    for name, (column, value) in extras.items():
        row = by_file[name]
        assert row[columns[column]] == value, (name, columns[column])
        others = [c for c, _ in extras.values() if columns[c] != columns[column]]
        assert all(row[columns[o]] is None for o in others), name
    assert by_file["k7.json"]["Quality"] == "w"
    # the same rivals again in a later batch: the same columns as the first time
    _extra_column_file(readings / "k8.json", "quality", 9, "u")
    _extra_column_file(readings / "k9.json", "Quality", 10, "v")
    run_pipeline(spark, cfg)
    again = {name_of(r["source_file"]): r for r in read_tables(spark, cfg.lake, [RAW])[RAW]}
    assert again["k8.json"][columns["quality"]] == "u" and again["k9.json"]["Quality"] == "v"
    staged = {
        (r["meterpoint_id"], r["interval_start_local"].hour)
        for r in tables[STAGING]
        if r["reading_date"].day == 2
    }
    assert staged == {(MP_A, hour) for hour in [*range(len(extras)), 8]}


def test_raw_column_names_change_only_the_names_that_clash() -> None:
    alone = sinks.raw_column_names([*COLUMNS, "Quality", "a b", "Source_File"])
    assert alone == {
        **{c: c for c in COLUMNS},
        "Quality": "Quality",
        "a b": "a_b",
        "Source_File": "file_Source_File",
    }
    clash = sinks.raw_column_names([*COLUMNS, "quality", "Quality", "INTERVAL_START"])
    assert clash["interval_start"] == "interval_start"  # a required column keeps its name
    assert clash["Quality"] == "Quality"  # the first in code-point order
    assert clash["quality"].startswith("quality__") and len(clash["quality"]) == len("quality__") + 8
    assert clash["INTERVAL_START"].startswith("INTERVAL_START__")
    # the same rivals in another order, another batch: the same columns
    assert sinks.raw_column_names(reversed(list(clash))) == clash
    # a name spelled as a column the table has keeps it; a suffixed name taken by a
    # file column of that very spelling gets more hex digits
    held = sinks.raw_column_names([*COLUMNS, "quality", "Quality"], lambda: [*COLUMNS, "quality"])
    assert held["quality"] == "quality" and held["Quality"].startswith("Quality__")
    taken = sinks.raw_column_names(["quality", "Quality", clash["quality"]])
    assert taken[clash["quality"]] == clash["quality"]
    assert taken["quality"].startswith(clash["quality"]) and len(taken["quality"]) == len("quality__") + 16
    assert sinks.raw_column_names(["x"], lambda: 1 / 0) == {"x": "x"}  # no clash: the table is not read


def test_no_file_whose_name_starts_with_a_dot_or_an_underscore_is_read(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Spark's listing skips most such names, but not `_x=1.json` (partition-like) nor
    `_metadata*` and `_common_metadata*` (Parquet summaries): the first was ingested and
    the others quarantined as unreadable. The source's glob now skips them all."""
    db, regular = make_sample(tmp_path)
    readings = tmp_path / "readings"
    copy_in(regular, readings)
    hidden = ["_x=1.json", "_metadata.json", "_common_metadata.json", "_b.json", ".c.json", "_.json"]
    for hour, name in enumerate(hidden):
        _extra_column_file(readings / name, "note", hour, name)
    shown = ["b=2.json", "[x].json"]  # an `=` or brackets elsewhere in a name are no reason to skip
    for hour, name in enumerate(shown, start=10):
        _extra_column_file(readings / name, "note", hour, name)
    cfg = make_config(tmp_path, readings=readings, db=db)
    pipeline = run_pipeline(spark, cfg)

    tables = read_tables(spark, cfg.lake, [RAW, STAGING, Q_FILES, Q_ROWS])
    read = {name_of(r["source_file"]) for t in (RAW, STAGING) for r in tables[t]}
    assert read == {*(p.name for p in regular), *shown}
    assert tables[Q_FILES] == [] and tables[Q_ROWS] == []
    assert [b["files"] for b in pipeline.batches] == [len(regular) + len(shown)]


def test_a_file_name_with_glob_characters_does_not_make_the_batch_read_files_twice(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Spark's scan of a batch that lists `[x].json` read the batch's other files twice:
    raw and the quarantine got their lines twice, and the batch log counted them. The
    batch now keeps each file's records once (and says so in the log)."""
    db, regular = make_sample(tmp_path)
    readings = tmp_path / "readings"
    copy_in(regular, readings)
    for hour, name in enumerate(["[x].json", "{y}.json", "a*b?.json"]):
        _extra_column_file(readings / name, "note", hour, name)
    (readings / "broken.json").write_text('{"columns": [')
    (readings / "empty.json").write_bytes(b"")  # no record: found through the source log
    _extra_column_file(readings / "a%20b.json", "note", 5, "a plain name with a percent sign")
    mixed = readings / "mixed.json"
    mixed.write_text(json.dumps({"columns": COLUMNS, "data": [["2021-01-03 00:00:00", -1, MP_B]]}))
    cfg = make_config(tmp_path, readings=readings, db=db)
    pipeline = run_pipeline(spark, cfg)

    files = sorted(p.name for p in readings.iterdir())
    (batch,) = pipeline.batches
    assert len(files) == 11 and batch["files"] == 10  # the empty file has no record
    assert batch["files_quarantined"] == 1 and batch["rows_quarantined"] == 1 and batch["files_unread"] == 1
    tables = read_tables(spark, cfg.lake, [RAW, Q_FILES, Q_ROWS])
    raw_rows = Counter(name_of(r["source_file"]) for r in tables[RAW])
    expected = {
        p.name: len(json.loads(p.read_text())["data"])
        for p in readings.iterdir()
        if p.name not in ("broken.json", "empty.json")
    }
    assert raw_rows == expected
    assert sorted(name_of(r["source_file"]) for r in tables[Q_FILES]) == ["broken.json", "empty.json"]
    assert [name_of(r["source_file"]) for r in tables[Q_ROWS]] == ["mixed.json"]
    assert batch["rows"] == sum(expected.values())
