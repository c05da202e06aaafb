"""Opening the ledger: SQLite (WAL, busy timeout) or PostgreSQL, migrated by Alembic.

The schema version is checked with one cheap query on every open; Alembic itself is imported
only when a migration has to run, so read commands stay fast.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from deepops_infra.errors import UserError
from deepops_infra.ledger import HEAD_REVISION

MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (psycopg2 is not a dependency)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _private_files(database: Path) -> None:
    """The ledger and its -wal/-shm 0600 whatever the umask. SQLite has just created the database
    (empty) if it was missing; it makes -wal and -shm with the database's mode, so tightening the
    database before WAL mode is set covers them; older ones made looser are tightened too."""
    from deepops_infra.paths import PRIVATE_FILE, tighten

    for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        tighten(path, PRIVATE_FILE)


def _sqlite_engine(url: str) -> Engine:
    database = url.split("///", 1)[1] if "///" in url else ""
    if database and database != ":memory:" and not Path(database).parent.exists():
        from deepops_infra.paths import private_dir

        private_dir(Path(database).parent)  # made 0700, parents too; an existing folder is left as it is
    if database and database != ":memory:":
        engine = create_engine(url, connect_args={"timeout": 30})
    else:  # one in-memory database shared by every session (an empty ledger, see Ledger)
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        if database and database != ":memory:":
            _private_files(Path(database))
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # Writers take the write lock up front: a deferred transaction that later writes can
        # fail with SQLITE_BUSY instead of waiting, which would make two `up` race badly.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    try:
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise UserError(f"the ledger URL needs the {exc.name} driver: pip install 'deepops-infra[postgres]'") from None


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError) as exc:
        if "alembic_version" in str(exc):
            return None
        raise


def migrate(engine: Engine) -> None:
    """Bring the schema to HEAD_REVISION (no-op, one query, when it is there)."""
    if current_revision(engine) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # Two processes migrating a fresh ledger at once must not both create tables: PostgreSQL
    # serialises on an advisory lock, SQLite on its write lock taken up front (the second waits,
    # then finds the schema at head and does nothing).
    with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7343001)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite ledger URL; None for PostgreSQL or an in-memory database."""
    url = normalize_url(url)
    database = url.split("///", 1)[1] if url.startswith("sqlite") and "///" in url else ""
    return Path(database) if database and database != ":memory:" else None


class Ledger:
    """The ledger database: one engine, sessions for reads and serialized write transactions.

    With `create=False` a SQLite ledger that does not exist yet is not created by opening it:
    reads see an empty ledger (in memory), and the file is made by the first `write()`. Commands
    that only read, `--dry-run` and refused requests leave no file behind."""

    def __init__(self, url: str, create: bool = True) -> None:
        self.url = normalize_url(url)
        file = sqlite_file(self.url)
        self._deferred = not create and file is not None and not file.exists()
        self._open("sqlite://" if self._deferred else self.url)

    def _open(self, url: str) -> None:
        try:
            self.engine = make_engine(url)
            if self._deferred:  # empty: the models' tables, no migration to run (nor Alembic to import)
                from deepops_infra.ledger.schema import Base

                Base.metadata.create_all(self.engine)
            else:
                migrate(self.engine)
        except OperationalError as exc:
            raise UserError(f"cannot open the ledger at {self.safe_url}: {exc.orig}".splitlines()[0]) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _materialize(self) -> None:
        """The first write to a ledger opened without creating it: now the file is made."""
        if self._deferred:
            self.engine.dispose()
            self._deferred = False
            self._open(self.url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that holds the write lock from its first statement (SQLite) and commits."""
        self._materialize()
        with self._sessions() as session:
            session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()
