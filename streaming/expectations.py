"""Data-quality expectations, declared once in `conf/` with an action each.

In the spirit of Delta Live Tables expectations:

- `warn`: keep the row, count it in the batch log;
- `drop`: quarantine the row (`quarantine/readings`, with the reason);
- `fail`: stop the query with a message naming the rule, the file and the row.

The contract's reading rules are expectations too (the parser finds the
violations; their default action is `drop`, and they may be set to `fail` but
not to `warn`: such a row has no valid reading to keep).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from streaming.config import ConfigError

ACTIONS = ("warn", "drop", "fail")

# contract rule -> parser reason codes (the text before ':' in `reason`)
CONTRACT_RULES: dict[str, tuple[str, ...]] = {
    "valid_row_width": ("wrong_width", "unreadable_row"),
    "valid_interval_start": ("bad_interval_start", "not_half_hour", "nonexistent_local_time"),
    "valid_consumption": ("bad_consumption", "negative_consumption"),
    "valid_meterpoint": ("bad_meterpoint",),
}
# rules beyond the contract, checked on rows that passed the contract's rules
EXTRA_RULES = ("known_meterpoint", "plausible_consumption", "not_in_future")
DEFAULTS = {
    **{rule: "drop" for rule in CONTRACT_RULES},
    "known_meterpoint": "warn",
    "plausible_consumption": "warn",
    "not_in_future": "warn",
}


class ExpectationFailed(RuntimeError):
    """A `fail` expectation was violated; the query stops and the batch is not written."""


@dataclass(frozen=True)
class Expectations:
    actions: dict[str, str]
    max_kwh_per_half_hour: float = 50.0

    def action(self, rule: str) -> str:
        return self.actions[rule]

    def rules_with(self, action: str) -> list[str]:
        return [rule for rule, a in self.actions.items() if a == action]

    def rule_of_reason(self, reason_code: str) -> str | None:
        for rule, codes in CONTRACT_RULES.items():
            if reason_code in codes:
                return rule
        return reason_code if reason_code in EXTRA_RULES else None


def load_expectations(settings: dict[str, str]) -> Expectations:
    """`[expectations]` of the config: rule = action, plus `max_kwh_per_half_hour`."""
    actions = dict(DEFAULTS)
    ceiling = 50.0
    for key, value in settings.items():
        if key == "max_kwh_per_half_hour":
            try:
                ceiling = float(value)
            except ValueError as exc:
                raise ConfigError(
                    f"expectations.max_kwh_per_half_hour must be a number, got {value!r}"
                ) from exc
            continue
        if key not in DEFAULTS:
            raise ConfigError(f"unknown expectation {key!r} (known: {', '.join(DEFAULTS)})")
        if value not in ACTIONS:
            raise ConfigError(f"expectation {key} must be one of {', '.join(ACTIONS)}, got {value!r}")
        if key in CONTRACT_RULES and value == "warn":
            raise ConfigError(f"expectation {key} is a contract rule: its action is drop or fail, not warn")
        actions[key] = value
    return Expectations(actions, ceiling)


def reason_code(reason: Column) -> Column:
    """The stable code of a reason such as `negative_consumption: ...`."""
    return F.split(reason, ":").getItem(0)


def extra_rule_violations(
    readings_df: DataFrame, meterpoints_df: DataFrame, now: datetime, ceiling: float
) -> DataFrame:
    """Adds one boolean column per extra rule: True where the row violates it.

    `readings_df` are valid parsed rows (`meterpoint_id`, `consumption_kwh`,
    `interval_start_us`).
    """
    known = meterpoints_df.select(F.col("meterpoint_id").alias("_known_id"))
    joined = readings_df.join(F.broadcast(known), readings_df["meterpoint_id"] == F.col("_known_id"), "left")
    now_us = int((now - datetime(1970, 1, 1)).total_seconds() * 1_000_000)
    return (
        joined.withColumn("known_meterpoint", F.col("_known_id").isNull())
        .withColumn("plausible_consumption", F.col("consumption_kwh") > F.lit(ceiling))
        .withColumn("not_in_future", F.col("interval_start_us") > F.lit(now_us))
        .drop("_known_id")
    )


def with_expectations(
    parsed_df: DataFrame, rules: Expectations, meterpoints_df: DataFrame, now: datetime
) -> DataFrame:
    """Parsed records with `reason` set for rows an extra `drop` rule rejects and a
    `warnings` array naming the `warn` rules a kept row violates."""
    # One pass over the records (file records never violate a row rule): splitting
    # rows from files and unioning them back would run the parser twice.
    checked = extra_rule_violations(parsed_df, meterpoints_df, now, rules.max_kwh_per_half_hour)
    valid = (F.col("kind") == "row") & F.col("reason").isNull()
    reason = F.col("reason")
    messages = {
        "known_meterpoint": F.format_string(
            "known_meterpoint: meterpoint_id %s is not in the meterpoint table", F.col("meterpoint_id")
        ),
        "plausible_consumption": F.format_string(
            "plausible_consumption: consumption_delta %s kWh is above the ceiling of %s kWh",
            F.col("consumption_kwh").cast("string"),
            F.lit(str(rules.max_kwh_per_half_hour)),
        ),
        "not_in_future": F.format_string(
            "not_in_future: interval_start %s is in the future", F.col("raw_values")["interval_start"]
        ),
    }
    for rule in EXTRA_RULES:
        if rules.action(rule) in ("drop", "fail"):
            reason = F.when(valid & F.col(rule) & reason.isNull(), messages[rule]).otherwise(reason)
    warn_rules = [r for r in EXTRA_RULES if rules.action(r) == "warn"]
    warnings = F.filter(
        F.array(*[F.when(valid & F.col(r), F.lit(r)) for r in warn_rules])
        if warn_rules
        else F.array().cast("array<string>"),
        lambda x: x.isNotNull(),
    )
    return checked.withColumn("reason", reason).withColumn("warnings", warnings).drop(*EXTRA_RULES)


def check_failures(
    reason_counts: dict[str, int], rules: Expectations, batch_id: int, example: str | None
) -> None:
    """Raise `ExpectationFailed` if a `fail` rule was violated in the batch."""
    failed = {
        code: n
        for code, n in reason_counts.items()
        if (rule := rules.rule_of_reason(code)) is not None and rules.action(rule) == "fail"
    }
    if failed:
        detail = ", ".join(f"{code} x{n}" for code, n in sorted(failed.items()))
        raise ExpectationFailed(
            f"batch {batch_id}: expectation(s) set to fail were violated ({detail}); "
            f"first: {example}. Fix or move the file(s), or change the action in conf/."
        )
