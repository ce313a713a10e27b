"""Errors that carry enough context to fix the problem without reading a traceback."""
from dataclasses import dataclass


class FtnbError(Exception):
    """Base class: anything ftnb raises on purpose."""


class ConfigError(FtnbError, ValueError):
    """A config field has a value that cannot work. `field` names it, so a form can show the message inline."""

    def __init__(self, field, message):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class DataError(FtnbError, ValueError):
    """The data cannot be used. Names the file (and row and field, when one row is at fault; `unit` is what a row
    is called where it is: "line" in a JSONL or CSV file)."""

    def __init__(self, message, source=None, row=None, field=None, unit="row"):
        self.source, self.row, self.field, self.message, self.unit = source, row, field, message, unit
        where = ", ".join(x for x in (source and str(source), row is not None and f"{unit} {row}",
                                      field and f"field {field!r}") if x)
        super().__init__(f"{where}: {message}" if where else message)


class ModelNotFoundError(FtnbError):
    """No model could be found or loaded; the message says which command fixes it."""


class RunError(FtnbError):
    """A run failed or a run directory cannot be used."""


@dataclass
class RowProblem(Exception):
    """One row of a data source cannot be used: where it is (`row`: as the user counts: a line of a JSONL or CSV file,
    an item of a list), which `field`, and why; `unit` names the row ("line"; the report that collects it sets it).
    Collected in a DataReport, never raised out of a loader."""
    row: int
    field: str
    reason: str
    unit: str = "row"

    def __str__(self):
        return f"{self.unit} {self.row}, field {self.field!r}: {self.reason}"
