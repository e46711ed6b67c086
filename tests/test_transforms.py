"""The pure DataFrame transforms on small inline data: latest wins, attribution, aggregates."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    BooleanType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampNTZType,
    TimestampType,
)

from streaming import dimensions, transforms

# ---------------------------------------------------------------- helpers


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def as_utc(value: datetime) -> datetime:
    """A collected TIMESTAMP (naive, in the Python process's local time) as an aware UTC instant."""
    return value.astimezone(UTC)


def rows_of(df: DataFrame, *columns: str) -> list[tuple[Any, ...]]:
    """The DataFrame's rows as sorted tuples of `columns`; instants made aware UTC."""
    selected = df.select(*columns)
    instants = [isinstance(f.dataType, TimestampType) for f in selected.schema.fields]
    out = [
        tuple(
            as_utc(v) if is_instant and v is not None else v
            for v, is_instant in zip(row, instants, strict=True)
        )
        for row in selected.collect()
    ]
    return sorted(out, key=repr)


# ---------------------------------------------------------------- latest_wins

READINGS = StructType(
    [
        StructField("meterpoint_id", StringType(), False),
        StructField("interval_start", TimestampType(), False),
        StructField("consumption_kwh", DoubleType(), False),
        StructField("source_file", StringType(), False),
        StructField("file_modification_time", TimestampType(), True),
        StructField("row_index", IntegerType(), True),
    ]
)
T0 = utc(2021, 1, 1, 0, 0)
T1 = utc(2021, 1, 1, 0, 30)


def winners(spark: SparkSession, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    df = transforms.latest_wins(spark.createDataFrame(rows, READINGS))
    return rows_of(df, "meterpoint_id", "interval_start", "consumption_kwh", "source_file")


def test_latest_wins_later_modification_time_wins_over_greater_name(spark: SparkSession) -> None:
    rows = [
        ("A", T0, 1.0, "/in/b.json", utc(2021, 1, 2, 7, 0), 0),
        ("A", T0, 2.0, "/in/a.json", utc(2021, 1, 2, 8, 0), 0),
        ("A", T1, 3.0, "/in/b.json", utc(2021, 1, 2, 7, 0), 1),
    ]
    assert winners(spark, rows) == [("A", T0, 2.0, "/in/a.json"), ("A", T1, 3.0, "/in/b.json")]


def test_latest_wins_equal_modification_time_greater_name_wins(spark: SparkSession) -> None:
    same = utc(2021, 1, 2, 7, 0)
    rows = [
        ("A", T0, 2.0, "/in/readings_b.json", same, 5),
        ("A", T0, 1.0, "/in/readings_a.json", same, 9),
        ("A", T0, 3.0, "/in/readings_c.json", same, 0),
    ]
    assert winners(spark, rows) == [("A", T0, 3.0, "/in/readings_c.json")]


def test_latest_wins_same_file_later_row_wins(spark: SparkSession) -> None:
    mtime = utc(2021, 1, 2, 7, 0)
    rows = [
        ("A", T0, 1.0, "/in/a.json", mtime, 0),
        ("A", T0, 2.0, "/in/a.json", mtime, 7),
        ("A", T0, 3.0, "/in/a.json", mtime, 3),
    ]
    assert winners(spark, rows) == [("A", T0, 2.0, "/in/a.json")]


def test_latest_wins_keeps_one_reading_per_meterpoint_and_instant(spark: SparkSession) -> None:
    mtime = utc(2021, 1, 2, 7, 0)
    rows = [
        ("A", T0, 1.0, "/in/a.json", mtime, 0),
        ("B", T0, 2.0, "/in/a.json", mtime, 1),
        ("A", T1, 3.0, "/in/a.json", mtime, 2),
        ("B", T0, 2.0, "/in/retry.json", mtime, 0),  # duplicate delivery, same value
    ]
    result = winners(spark, rows)
    assert [(mp, t, kwh) for mp, t, kwh, _ in result] == [("A", T0, 1.0), ("A", T1, 3.0), ("B", T0, 2.0)]


# ---------------------------------------------------------------- attribution

PRODUCTS = [
    # display_name, is_variable, id, product_id: `id` runs the other way round on purpose
    ("Fixed 12M", 0, 3, 1),
    ("Agile", 1, 2, 2),
    ("Agile", 1, 1, 3),  # a second product_id sharing a display name
]
AGREEMENTS = [
    # agreement_id, valid_from, valid_to, product_id, meterpoint_id, account_id
    (1, "2020-12-01", "2021-01-02", 1, "SWITCH", 100),
    (2, "2021-01-02", None, 2, "SWITCH", 100),
    (3, "2021-01-01", "2021-01-01", 2, "ZERO", 200),  # zero length: covers nothing
    (4, "2020-01-01", None, 1, "ZERO_ON_TOP", 300),
    (5, "2021-01-01", "2021-01-01", 2, "ZERO_ON_TOP", 300),  # later valid_from but empty
    (7, "2020-06-01", None, 1, "OVERLAP", 400),
    (6, "2020-12-01", None, 2, "OVERLAP", 401),  # later valid_from, smaller id: wins
    (8, "2020-12-01", None, 1, "TIE", 500),
    (9, "2020-12-01", None, 3, "TIE", 501),  # same valid_from, greater id: wins
    (10, "2020-01-01", None, 99, "NO_PRODUCT", 600),  # product 99 does not exist
    (11, "2020-01-01", "2021-01-01", 1, "ENDED", 700),
    (12, "2020-01-01", "", 3, "UNLISTED", 800),  # '' valid_to: open-ended; not in meterpoint
]
METERPOINTS = [
    ("London", "SWITCH"),
    ("Southern", "ZERO"),
    ("Southern", "ZERO_ON_TOP"),
    ("North West", "OVERLAP"),
    ("Yorkshire", "TIE"),
    ("South Wales", "NO_PRODUCT"),
    ("Eastern England", "ENDED"),
    ("London", "NONE"),  # no agreement at all
]


def write_db(
    path: Path,
    agreements: list[tuple[Any, ...]],
    products: list[tuple[Any, ...]],
    meterpoints: list[tuple[Any, ...]],
) -> Path:
    """A SQLite database with the case study's three tables."""
    con = sqlite3.connect(path)
    try:
        con.execute(
            "CREATE TABLE agreement (agreement_id INTEGER, agreement_valid_from TEXT, "
            "agreement_valid_to TEXT, product_id INTEGER, meterpoint_id TEXT, account_id INTEGER)"
        )
        con.execute(
            "CREATE TABLE product (display_name TEXT, is_variable INTEGER, id INTEGER, product_id INTEGER)"
        )
        con.execute("CREATE TABLE meterpoint (region TEXT, meterpoint_id TEXT)")
        con.executemany("INSERT INTO agreement VALUES (?, ?, ?, ?, ?, ?)", agreements)
        con.executemany("INSERT INTO product VALUES (?, ?, ?, ?)", products)
        con.executemany("INSERT INTO meterpoint VALUES (?, ?)", meterpoints)
        con.commit()
    finally:
        con.close()
    return path


@pytest.fixture(scope="module")
def conformed(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dimensions.Conformed:
    db = write_db(tmp_path_factory.mktemp("dims") / "case_study.db", AGREEMENTS, PRODUCTS, METERPOINTS)
    return dimensions.conformed_dataframes(spark, dimensions.read_sqlite(str(db)))


ATTRIBUTION_INPUT = StructType(
    [
        StructField("meterpoint_id", StringType(), False),
        StructField("reading_date", DateType(), False),
        StructField("consumption_kwh", DoubleType(), False),
    ]
)
# meterpoint, local date -> (agreement_id, product_id, display name, is_variable, region, account_id)
EXPECTED_ATTRIBUTION: dict[tuple[str, date], tuple[Any, ...]] = {
    ("SWITCH", date(2021, 1, 1)): (1, 1, "Fixed 12M", False, "London", 100),
    ("SWITCH", date(2021, 1, 2)): (2, 2, "Agile", True, "London", 100),  # switch day: the new one
    ("SWITCH", date(2021, 1, 3)): (2, 2, "Agile", True, "London", 100),
    ("SWITCH", date(2020, 11, 30)): (None, None, None, None, "London", None),
    ("ZERO", date(2021, 1, 1)): (None, None, None, None, "Southern", None),
    ("ZERO_ON_TOP", date(2021, 1, 1)): (4, 1, "Fixed 12M", False, "Southern", 300),
    ("OVERLAP", date(2020, 11, 30)): (7, 1, "Fixed 12M", False, "North West", 400),
    ("OVERLAP", date(2021, 1, 1)): (6, 2, "Agile", True, "North West", 401),
    ("TIE", date(2021, 1, 1)): (9, 3, "Agile", True, "Yorkshire", 501),
    ("NO_PRODUCT", date(2021, 1, 1)): (10, 99, None, None, "South Wales", 600),
    ("ENDED", date(2020, 12, 31)): (11, 1, "Fixed 12M", False, "Eastern England", 700),
    ("ENDED", date(2021, 1, 1)): (None, None, None, None, "Eastern England", None),
    ("NONE", date(2021, 1, 1)): (None, None, None, None, "London", None),
    ("UNLISTED", date(2021, 1, 1)): (12, 3, "Agile", True, None, 800),
}


@pytest.fixture(scope="module")
def attributed(
    spark: SparkSession, conformed: dimensions.Conformed
) -> dict[tuple[str, date], list[tuple[Any, ...]]]:
    readings = spark.createDataFrame([(mp, d, 0.5) for mp, d in EXPECTED_ATTRIBUTION], ATTRIBUTION_INPUT)
    df = transforms.with_attribution(readings, conformed.segments_df, conformed.meterpoints_df)
    assert df.columns == ["meterpoint_id", "reading_date", "consumption_kwh", *transforms.ATTRIBUTION_COLUMNS]
    out: dict[tuple[str, date], list[tuple[Any, ...]]] = {}
    for row in df.collect():
        out.setdefault((row.meterpoint_id, row.reading_date), []).append(
            tuple(row[c] for c in transforms.ATTRIBUTION_COLUMNS)
        )
    return out


@pytest.mark.parametrize(
    ("meterpoint", "day"),
    [
        ("SWITCH", date(2021, 1, 1)),
        ("SWITCH", date(2021, 1, 2)),
        ("SWITCH", date(2021, 1, 3)),
        ("SWITCH", date(2020, 11, 30)),
    ],
)
def test_switch_day_belongs_to_the_new_agreement(
    attributed: dict[tuple[str, date], list[tuple[Any, ...]]], meterpoint: str, day: date
) -> None:
    assert attributed[(meterpoint, day)] == [EXPECTED_ATTRIBUTION[(meterpoint, day)]]


def test_zero_length_agreement_covers_nothing(
    attributed: dict[tuple[str, date], list[tuple[Any, ...]]],
) -> None:
    assert attributed[("ZERO", date(2021, 1, 1))] == [(None, None, None, None, "Southern", None)]
    # and it does not shadow a longer agreement beneath it
    assert attributed[("ZERO_ON_TOP", date(2021, 1, 1))] == [(4, 1, "Fixed 12M", False, "Southern", 300)]


def test_meterpoint_without_agreement_gets_null_product_fields_but_its_region(
    attributed: dict[tuple[str, date], list[tuple[Any, ...]]],
) -> None:
    assert attributed[("NONE", date(2021, 1, 1))] == [(None, None, None, None, "London", None)]


def test_agreement_ending_on_a_date_does_not_cover_that_date(
    attributed: dict[tuple[str, date], list[tuple[Any, ...]]],
) -> None:
    assert attributed[("ENDED", date(2020, 12, 31))] == [(11, 1, "Fixed 12M", False, "Eastern England", 700)]
    assert attributed[("ENDED", date(2021, 1, 1))] == [(None, None, None, None, "Eastern England", None)]


def test_overlapping_agreements_later_valid_from_wins_even_with_smaller_id(
    attributed: dict[tuple[str, date], list[tuple[Any, ...]]],
) -> None:
    assert attributed[("OVERLAP", date(2020, 11, 30))] == [(7, 1, "Fixed 12M", False, "North West", 400)]
    assert attributed[("OVERLAP", date(2021, 1, 1))] == [(6, 2, "Agile", True, "North West", 401)]


def test_overlapping_agreements_with_equal_valid_from_greater_id_wins(
    attributed: dict[tuple[str, date], list[tuple[Any, ...]]],
) -> None:
    assert attributed[("TIE", date(2021, 1, 1))] == [(9, 3, "Agile", True, "Yorkshire", 501)]


def test_agreement_with_missing_product_keeps_agreement_id_with_null_display_name(
    attributed: dict[tuple[str, date], list[tuple[Any, ...]]],
) -> None:
    assert attributed[("NO_PRODUCT", date(2021, 1, 1))] == [(10, 99, None, None, "South Wales", 600)]


def test_product_is_joined_on_product_dot_product_id_not_its_surrogate_id(
    attributed: dict[tuple[str, date], list[tuple[Any, ...]]],
) -> None:
    # agreement 1 has product_id 1: product.product_id 1 is "Fixed 12M"; product.id 1 would be "Agile"
    agreement_id, product_id, name, is_variable, _, _ = attributed[("SWITCH", date(2021, 1, 1))][0]
    assert (agreement_id, product_id, name, is_variable) == (1, 1, "Fixed 12M", False)


def test_meterpoint_missing_from_meterpoint_table_keeps_its_agreement_with_null_region(
    attributed: dict[tuple[str, date], list[tuple[Any, ...]]],
) -> None:
    assert attributed[("UNLISTED", date(2021, 1, 1))] == [(12, 3, "Agile", True, None, 800)]


def test_attribution_keeps_exactly_one_row_per_reading(
    attributed: dict[tuple[str, date], list[tuple[Any, ...]]],
) -> None:
    assert attributed == {k: [v] for k, v in EXPECTED_ATTRIBUTION.items()}


def test_attribution_replaces_existing_attribution_columns(
    spark: SparkSession, conformed: dimensions.Conformed
) -> None:
    schema = StructType(
        [
            *ATTRIBUTION_INPUT.fields,
            StructField("agreement_id", LongType(), True),
            StructField("region", StringType(), True),
        ]
    )
    readings = spark.createDataFrame([("SWITCH", date(2021, 1, 2), 0.5, 1, "Stale")], schema)
    df = transforms.with_attribution(readings, conformed.segments_df, conformed.meterpoints_df)
    row = df.collect()
    assert len(row) == 1
    assert (row[0].agreement_id, row[0].region, row[0].product_display_name) == (2, "London", "Agile")


def test_agreement_segments_split_a_meterpoint_where_the_winner_changes() -> None:
    agreements, products, _, _ = dimensions.conform(
        dimensions.Dimensions(
            tables={
                "agreement": dimensions.SourceTable(
                    "agreement",
                    dimensions.REQUIRED["agreement"],
                    ("",) * 6,
                    (
                        (1, "2020-01-01", None, 1, "M", 1),
                        (2, "2020-03-01", "2020-04-01", 2, "M", 1),  # inside 1: wins while it lasts
                        (3, "2020-05-01", "2020-05-01", 2, "M", 1),  # zero length
                    ),
                ),
                "product": dimensions.SourceTable(
                    "product",
                    dimensions.REQUIRED["product"],
                    ("",) * 4,
                    (("One", 0, 10, 1), ("Two", 1, 20, 2)),
                ),
                "meterpoint": dimensions.SourceTable("meterpoint", ("region", "meterpoint_id"), ("", ""), ()),
            },
            fingerprint="test",
        )
    )
    segments = dimensions.agreement_segments(agreements, products)
    assert [(s.segment_from, s.segment_to, s.agreement_id, s.product_display_name) for s in segments] == [
        (date(2020, 1, 1), date(2020, 3, 1), 1, "One"),
        (date(2020, 3, 1), date(2020, 4, 1), 2, "Two"),
        (date(2020, 4, 1), None, 1, "One"),
    ]


# ---------------------------------------------------------------- aggregates

STAGING = StructType(
    [
        StructField("meterpoint_id", StringType(), False),
        StructField("interval_start", TimestampType(), False),
        StructField("interval_start_local", TimestampNTZType(), False),
        StructField("reading_date", DateType(), False),
        StructField("consumption_kwh", DoubleType(), False),
        StructField("product_display_name", StringType(), True),
    ]
)
L0 = datetime(2021, 1, 1, 0, 0)
L1 = datetime(2021, 1, 1, 0, 30)
D1 = date(2021, 1, 1)
D2 = date(2021, 1, 2)
STAGING_ROWS = [
    ("A", T0, L0, D1, 0.25, "Agile"),  # A and B: two product_ids, one display name
    ("B", T0, L0, D1, 0.5, "Agile"),
    ("C", T0, L0, D1, 1.0, "Fixed"),
    ("N1", T0, L0, D1, 0.125, None),  # no agreement
    ("A", T1, L1, D1, 0.75, "Agile"),
    ("N1", T1, L1, D1, 0.25, None),
    ("N2", T1, L1, D1, 0.5, None),
    ("A", utc(2021, 1, 2, 0, 0), datetime(2021, 1, 2, 0, 0), D2, 2.0, "Agile"),
    # fall-back: one wall-clock half hour, two instants
    ("A", utc(2021, 10, 31, 0, 0), datetime(2021, 10, 31, 1, 0), date(2021, 10, 31), 0.125, "Agile"),
    ("A", utc(2021, 10, 31, 1, 0), datetime(2021, 10, 31, 1, 0), date(2021, 10, 31), 0.25, "Agile"),
]


@pytest.fixture(scope="module")
def staging_df(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(STAGING_ROWS, STAGING).cache()


def test_half_hour_totals_count_the_meterpoints_and_sum_kwh_per_instant(staging_df: DataFrame) -> None:
    df = transforms.half_hour_totals(staging_df)
    assert dict(df.dtypes)["meterpoint_count"] == "bigint"
    assert rows_of(df, "interval_start", "interval_start_local", "meterpoint_count", "total_kwh") == sorted(
        [
            (T0, L0, 4, 1.875),
            (T1, L1, 3, 1.5),
            (utc(2021, 1, 2, 0, 0), datetime(2021, 1, 2, 0, 0), 1, 2.0),
            (utc(2021, 10, 31, 0, 0), datetime(2021, 10, 31, 1, 0), 1, 0.125),
            (utc(2021, 10, 31, 1, 0), datetime(2021, 10, 31, 1, 0), 1, 0.25),
        ],
        key=repr,
    )


def test_product_day_totals_group_by_display_name_and_keep_the_null_group(staging_df: DataFrame) -> None:
    df = transforms.product_day_totals(staging_df)
    assert dict(df.dtypes) == {
        "product_display_name": "string",
        "date": "date",
        "meterpoint_count": "bigint",
        "total_kwh": "double",
    }
    assert rows_of(df, "product_display_name", "date", "meterpoint_count", "total_kwh") == sorted(
        [
            ("Agile", D1, 2, 1.5),  # A counted once over two half hours
            ("Fixed", D1, 1, 1.0),
            (None, D1, 2, 0.875),
            ("Agile", D2, 1, 2.0),
            ("Agile", date(2021, 10, 31), 1, 0.375),  # two instants, one meterpoint
        ],
        key=repr,
    )


def test_product_day_totals_reconcile_with_half_hour_totals_per_date(staging_df: DataFrame) -> None:
    per_day: dict[date, float] = {}
    for row in transforms.product_day_totals(staging_df).collect():
        per_day[row.date] = per_day.get(row.date, 0.0) + row.total_kwh
    per_half_hour: dict[date, float] = {}
    for row in transforms.half_hour_totals(staging_df).collect():
        d = row.interval_start_local.date()
        per_half_hour[d] = per_half_hour.get(d, 0.0) + row.total_kwh
    assert per_day.keys() == per_half_hour.keys()
    for d, total in per_day.items():
        assert total == pytest.approx(per_half_hour[d])


def test_gold_aggregate_per_half_hour_average_is_total_over_meterpoint_count(staging_df: DataFrame) -> None:
    df = transforms.gold_aggregate_per_half_hour(staging_df)
    rows = {
        r.interval_start_local: r for r in df.filter(df.interval_start_local < datetime(2021, 1, 2)).collect()
    }
    assert (rows[L0].meterpoint_count, rows[L0].total_kwh, rows[L0].avg_kwh) == (4, 1.875, 1.875 / 4)
    assert (rows[L1].meterpoint_count, rows[L1].total_kwh, rows[L1].avg_kwh) == (3, 1.5, 0.5)
    for r in df.collect():
        assert r.avg_kwh == pytest.approx(r.total_kwh / r.meterpoint_count)


def test_gold_avg_half_hour_by_product_keeps_the_null_group(staging_df: DataFrame) -> None:
    df = transforms.gold_avg_half_hour_by_product(staging_df).filter("interval_start_local < '2021-01-02'")
    assert rows_of(
        df, "product_display_name", "interval_start", "meterpoint_count", "total_kwh", "avg_kwh"
    ) == sorted(
        [
            ("Agile", T0, 2, 0.75, 0.375),
            ("Fixed", T0, 1, 1.0, 1.0),
            (None, T0, 1, 0.125, 0.125),
            ("Agile", T1, 1, 0.75, 0.75),
            (None, T1, 2, 0.75, 0.375),
        ],
        key=repr,
    )


# ---------------------------------------------------------------- active agreements

ACTIVE_INPUT = StructType(
    [
        StructField("agreement_id", LongType(), False),
        StructField("meterpoint_id", StringType(), False),
        StructField("valid_from", DateType(), False),
        StructField("valid_to", DateType(), True),
        StructField("product_id", LongType(), True),
        StructField("product_display_name", StringType(), True),
        StructField("product_is_variable", BooleanType(), True),
    ]
)


def test_active_agreements_are_strictly_inside_their_validity_on_the_as_of_date(spark: SparkSession) -> None:
    as_of = date(2021, 1, 1)
    agreements = spark.createDataFrame(
        [
            (1, "M1", date(2020, 12, 31), date(2021, 1, 2), 1, "Fixed", False),  # active
            (2, "M2", date(2020, 1, 1), None, 2, "Agile", True),  # open-ended: active
            (3, "M3", date(2021, 1, 1), None, 2, "Agile", True),  # starts on as_of: not active
            (4, "M4", date(2020, 1, 1), date(2021, 1, 1), 1, "Fixed", False),  # ends on as_of: not active
            (5, "M5", date(2021, 1, 2), None, 1, "Fixed", False),  # future
            (6, "M6", date(2021, 1, 1), date(2021, 1, 1), 1, "Fixed", False),  # zero length on as_of
            (7, "M7", date(2019, 1, 1), date(2020, 1, 1), 1, "Fixed", False),  # past
            (8, "M8", date(2020, 6, 1), None, 99, None, None),  # product missing: still active
        ],
        ACTIVE_INPUT,
    )
    df = transforms.active_agreements(agreements, as_of)
    assert df.dtypes == [
        ("agreement_id", "bigint"),
        ("meterpoint_id", "string"),
        ("product_display_name", "string"),
        ("product_is_variable", "boolean"),
    ]
    assert sorted(tuple(r) for r in df.collect()) == [
        (1, "M1", "Fixed", False),
        (2, "M2", "Agile", True),
        (8, "M8", None, None),
    ]


def test_active_agreements_from_the_conformed_dimensions(conformed: dimensions.Conformed) -> None:
    df = transforms.active_agreements(conformed.agreements_df, date(2021, 1, 1))
    assert sorted(tuple(r) for r in df.collect()) == [
        (1, "SWITCH", "Fixed 12M", False),
        (4, "ZERO_ON_TOP", "Fixed 12M", False),
        (6, "OVERLAP", "Agile", True),
        (7, "OVERLAP", "Fixed 12M", False),
        (8, "TIE", "Fixed 12M", False),
        (9, "TIE", "Agile", True),
        (10, "NO_PRODUCT", None, None),
        (12, "UNLISTED", "Agile", True),
    ]
