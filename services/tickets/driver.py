"""The hot path's prebuilt statements, run on the driver's cursor at driver speed.

Applying a command runs 7 to 10 statements; through SQLAlchemy Core each one
costs 20-30 µs of execution overhead (execution context, result object, events)
against ~4 µs on the DBAPI cursor. ``Executor`` runs the statements of
``services/tickets/statements.py`` (and the few built once in ``workflow``,
``ratelimit``, ``pending``, ``suspended``) on the cursor of the caller's
connection, inside the caller's transaction or SAVEPOINT: it never begins,
commits or rolls back, and refuses a connection with no transaction begun.

What is kept from Core, so rows and table contents are exactly Core's:

- the SQL: each statement is compiled once per dialect, per set of parameter
  names (an INSERT's or UPDATE's columns are the names given, as in Core) and
  per executemany, and cached by the statement object's identity (statements
  are module constants; the cache keeps each one alive and checks it);
- SQLAlchemy's own bind processors (SQLite's datetimes, JSON, booleans, the
  ``UtcDateTime`` decorator) and result processors (tz-aware datetimes, lists for
  JSON, booleans), taken from ``type.dialect_impl(dialect)``;
- expanding IN (``bindparam(expanding=True)``), rendered by the compiler itself
  (``construct_expanded_state``) once per list length;
- inserted ids the way Core reads them per dialect: from the RETURNING the
  compiler added (PostgreSQL) or from ``cursor.lastrowid`` (SQLite);
- a list of several parameter sets is one ``executemany``, one set is one execute;
- errors: the driver's exceptions become SQLAlchemy's (``IntegrityError``,
  ``OperationalError``, ...), and a lost connection is invalidated, as Core does.

Core's ``before/after_cursor_execute`` events do not fire for these statements.

Semi-internal SQLAlchemy attributes relied on (pinned by
tests/unit/test_driver_core.py): ``SQLCompiler.positiontup`` (the order of
positional binds), ``SQLCompiler.binds`` (name -> BindParameter),
``SQLCompiler.effective_returning``, ``ExpandedState.parameter_expansion``, the
``column_keys`` and ``for_executemany`` arguments of ``compile``, and
``DBAPIError.instance`` for wrapping the driver's errors.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.dml import Insert, ValuesBase
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.selectable import SelectBase

__all__ = ["Executor", "Result"]

Params = Mapping[str, Any]
_REQUIRED = object()


class Result:
    """What a statement gave back: its rows (read at once, processed as Core does),
    the row count, and for an INSERT the new row's id."""

    __slots__ = ("_rows", "rowcount", "_inserted_id")

    def __init__(self, rows: list[Any], rowcount: int, inserted_id: int | None) -> None:
        self._rows = rows
        self.rowcount = rowcount
        self._inserted_id = inserted_id

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise (exc.NoResultFound if not self._rows else exc.MultipleResultsFound)(
                f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise exc.MultipleResultsFound(f"expected at most one row, got {len(self._rows)}")
        return self._rows[0][0] if self._rows else None

    def scalars(self) -> list[Any]:
        return [row[0] for row in self._rows]

    @property
    def inserted_primary_key(self) -> tuple[int] | None:
        """As Core's: the new row's id, for an INSERT into a table with an integer key."""
        return None if self._inserted_id is None else (self._inserted_id,)


class _Shape:
    """The SQL of one prepared statement for one set of expanding list lengths, and
    where each bind's value comes from: (parameter, index in its list or -1,
    bind processor, default value)."""

    __slots__ = ("sql", "slots", "names")

    def __init__(self, sql: str, slots: tuple[tuple[str, int, Any, Any], ...], names: tuple[str, ...] | None):
        self.sql = sql
        self.slots = slots
        self.names = names  # named paramstyles: the bind names, in the order of ``slots``


class _Prepared:
    """One statement compiled for one dialect and one set of parameter names."""

    def __init__(self, statement: ClauseElement, dialect: Dialect, keys: Sequence[str] | None, many: bool) -> None:
        self.statement = statement
        self.dialect = dialect
        compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys) if keys is not None else None,
                                          for_executemany=many)
        self.compiled = compiled
        self.positional = bool(dialect.positional)
        binds, defaults = compiled.binds, compiled.params
        names = list(compiled.positiontup) if compiled.positiontup is not None else list(defaults)
        self._binds: dict[str, tuple[Any, Any]] = {}
        for name in dict.fromkeys(names):
            bind = binds[name]
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            self._binds[name] = (processor, _REQUIRED if bind.required else defaults[name])
        self.expanding = tuple(name for name in self._binds if binds[name].expanding)
        self.shapes: dict[tuple[int, ...], _Shape] = {}
        if not self.expanding:
            self.shapes[()] = self._shape(str(compiled), names, {})
        returning = list(compiled.effective_returning or ())
        if isinstance(statement, SelectBase):
            columns = list(statement.selected_columns)
            keys_ = list(statement.selected_columns.keys())
        else:
            columns, keys_ = returning, [c.key for c in returning]
        explicit = bool(getattr(statement, "_returning", ()))  # an INSERT's own RETURNING, not the id Core adds
        self.implicit_id = isinstance(statement, Insert) and bool(returning) and not explicit
        self.lastrowid = isinstance(statement, Insert) and not returning and bool(getattr(dialect, "postfetch_lastrowid", False))
        self.returns_rows = bool(columns) and not self.implicit_id
        self.types = [c.type for c in columns]
        if len(set(keys_)) != len(keys_):
            raise ValueError(f"columns with the same name in {str(compiled)!r}: {keys_}")
        self.row_type: Any = None
        if keys_:
            row = namedtuple("Row", keys_)  # type: ignore[misc]
            self.row_type = type("Row", (row,), {"__slots__": (), "_mapping": property(lambda r: r._asdict())})
        self.result_processors: list[Any] | None = None  # from the first cursor description

    def _shape(self, sql: str, names: list[str], expansion: dict[str, list[str]]) -> _Shape:
        origin = {expanded: (name, i) for name, many in expansion.items() for i, expanded in enumerate(many)}
        slots = []
        for name in names:
            source, index = origin.get(name, (name, -1))
            processor, default = self._binds[source]
            slots.append((source, index, processor, default))
        return _Shape(sql, tuple(slots), None if self.positional else tuple(names))

    def shape(self, params: Params) -> _Shape:
        lengths = tuple(len(params[name]) for name in self.expanding)
        shape = self.shapes.get(lengths)
        if shape is None:
            placeholders: dict[str, Any] = dict.fromkeys(self._binds)
            placeholders.update((name, [None] * n) for name, n in zip(self.expanding, lengths))
            state = self.compiled.construct_expanded_state(placeholders)
            names = list(state.positiontup) if state.positiontup is not None else list(state.parameters)
            shape = self.shapes[lengths] = self._shape(state.statement, names, dict(state.parameter_expansion))
        return shape

    def rows(self, description: Any, fetched: list[Any]) -> list[Any]:
        processors = self.result_processors
        if processors is None:
            processors = self.result_processors = [
                t.dialect_impl(self.dialect).result_processor(self.dialect, d[1])
                for t, d in zip(self.types, description)
            ]
        make = self.row_type._make
        if not any(processors):
            return [make(r) for r in fetched]
        return [make([v if p is None else p(v) for p, v in zip(processors, r)]) for r in fetched]


_CACHE: WeakKeyDictionary[Dialect, dict[Any, _Prepared]] = WeakKeyDictionary()


def _values(shape: _Shape, params: Params, positional: bool) -> Any:
    values = []
    for name, index, processor, default in shape.slots:
        value = params.get(name, default)
        if value is _REQUIRED:
            raise exc.ArgumentError(f"a value is required for bind parameter {name!r}")
        if index >= 0:
            value = value[index]
        values.append(value if processor is None else processor(value))
    return values if positional else dict(zip(shape.names or (), values))


class Executor:
    """Runs prebuilt statements on ``conn``'s DBAPI connection, in the transaction
    (or SAVEPOINT) the caller began on it. Raises RuntimeError when none is begun:
    Core would not know of the writes, and its commit would commit nothing."""

    def __init__(self, conn: Connection) -> None:
        if not conn.in_transaction():
            raise RuntimeError("begin a transaction on the connection first (the executor never begins one)")
        self._conn = conn
        self.dialect: Dialect = conn.dialect
        self.dialect_name: str = conn.dialect.name
        self._positional = bool(conn.dialect.positional)
        self._dbapi_connection: Any = conn.connection.dbapi_connection
        self._cursor: Any = None
        self._cache = _CACHE.setdefault(conn.dialect, {})

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._cursor is not None:
            cursor, self._cursor = self._cursor, None
            cursor.close()

    def prepared(self, statement: ClauseElement, keys: Sequence[str] | None, many: bool) -> _Prepared:
        cache_key = (id(statement), keys, many)
        found = self._cache.get(cache_key)
        if found is None or found.statement is not statement:
            found = self._cache[cache_key] = _Prepared(statement, self.dialect, keys, many)
        return found

    def execute(self, statement: ClauseElement, params: Params | Sequence[Params] | None = None) -> Result:
        """Run ``statement`` with one parameter set, or with a list of them
        (executemany when there are several). Raises SQLAlchemy's DBAPIError family."""
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            if len(params) > 1:
                self._execute_many(statement, params)
                return Result([], -1, None)
            params = params[0]
        keys = tuple(params) if isinstance(statement, ValuesBase) else None
        prepared = self.prepared(statement, keys, False)
        shape = prepared.shapes.get(()) if not prepared.expanding else prepared.shape(params)
        assert shape is not None
        try:
            values = _values(shape, params, self._positional)
        except exc.ArgumentError:
            raise
        except Exception as e:  # a bind processor refused a value (a naive datetime): as Core wraps it
            raise exc.StatementError(str(e), shape.sql, params, e) from e
        cursor = self._cursor or self._open()
        try:
            cursor.execute(shape.sql, values)
            description = cursor.description
            fetched = cursor.fetchall() if description is not None else []
        except self.dialect.loaded_dbapi.Error as e:
            raise self._wrapped(e, shape.sql, values, cursor) from e
        inserted_id: int | None = None
        if prepared.implicit_id:
            inserted_id = int(fetched[0][0]) if fetched else None
        elif prepared.lastrowid:
            inserted_id = cursor.lastrowid
        rows = prepared.rows(description, fetched) if prepared.returns_rows else []
        return Result(rows, cursor.rowcount, inserted_id)

    def _execute_many(self, statement: ClauseElement, many: Sequence[Params]) -> None:
        keys = tuple(many[0]) if isinstance(statement, ValuesBase) else None
        prepared = self.prepared(statement, keys, True)
        if prepared.expanding:
            raise exc.ArgumentError("expanding IN takes one parameter set")
        shape = prepared.shapes[()]
        try:
            values = [_values(shape, p, self._positional) for p in many]
        except exc.ArgumentError:
            raise
        except Exception as e:
            raise exc.StatementError(str(e), shape.sql, many[0], e) from e
        cursor = self._cursor or self._open()
        try:
            cursor.executemany(shape.sql, values)
        except self.dialect.loaded_dbapi.Error as e:
            raise self._wrapped(e, shape.sql, values, cursor) from e

    def _open(self) -> Any:
        try:
            self._cursor = self._dbapi_connection.cursor()
        except self.dialect.loaded_dbapi.Error as e:
            raise self._wrapped(e, None, None, None) from e
        return self._cursor

    def _wrapped(self, error: Exception, sql: str | None, values: Any, cursor: Any) -> BaseException:
        lost = bool(self.dialect.is_disconnect(error, self._dbapi_connection, cursor))  # type: ignore[arg-type]
        if lost:
            self._cursor = None
            self._conn.invalidate(error)
        return exc.DBAPIError.instance(
            sql, values, error, self.dialect.loaded_dbapi.Error,
            hide_parameters=bool(getattr(self._conn.engine, "hide_parameters", False)),
            connection_invalidated=lost, dialect=self.dialect)
