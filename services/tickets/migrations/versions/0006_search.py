"""Full-text search over tickets' summaries, descriptions and comments.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 10:00:00

The search objects are the database's own and differ per dialect, so they are
not in ``tables.metadata``; ``services.tickets.search.include_object`` keeps
them out of the schema comparison.

- SQLite: external-content FTS5 tables, which store no text of their own,
  kept in step by triggers: ``tickets_fts`` (queue, summary, description) and
  ``comments_fts`` (queue, body; its content is the view ``comments_search``,
  which gives each comment its ticket's queue). The queue is indexed so a
  search restricted to some queues never visits another queue's rows. The
  update triggers fire only for the indexed columns: tickets and comments are
  updated often (status, version, delivery state) and the text never changes
  with them.
- PostgreSQL: ``search_vector`` tsvector columns with GIN indexes: on
  tickets a STORED generated column (the summary weighted A, the description
  B), on comments one a trigger keeps (the body), as a generated column
  cannot read the ticket's queue: each vector also holds the row's queue as a
  lexeme no text can produce, so a search restricted to some queues finds
  their rows in one GIN lookup. A tsvector holds at most 1 MB and a mail's
  text may be up to 1,000,000 characters, so only the first 10,000 characters
  of a summary and 100,000 of a description or body are indexed (at most
  about 4.5 bytes of tsvector per character: no insert can fail on it).

Existing rows are indexed by the upgrade: FTS5 ``rebuild``; PostgreSQL
computes the tickets' generated column when it is added (rewriting the table)
and the comments' vectors in one UPDATE. A later migration that rebuilds
``tickets`` or ``comments`` on SQLite (a batch ALTER) must drop these objects
first and create them again after.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of services/tickets/search.py at this revision.
_TOKENIZE = "porter unicode61 remove_diacritics 2"
# A comment's queue is its ticket's: the view is the comments index's content.
_QUEUE_OF = "(SELECT queue FROM tickets WHERE id = {}.ticket_id)"
_SQLITE_UP = [
    "CREATE VIEW comments_search AS SELECT c.id, t.queue, c.body FROM comments c "
    "JOIN tickets t ON t.id = c.ticket_id",
    "CREATE VIRTUAL TABLE tickets_fts USING fts5(queue, summary, description, content='tickets', "
    f"content_rowid='id', tokenize='{_TOKENIZE}')",
    "CREATE VIRTUAL TABLE comments_fts USING fts5(queue, body, content='comments_search', "
    f"content_rowid='id', tokenize='{_TOKENIZE}')",
    # The external-content trigger pattern of the FTS5 documentation: a
    # 'delete' must pass the values that were indexed.
    "CREATE TRIGGER tickets_fts_insert AFTER INSERT ON tickets BEGIN "
    "INSERT INTO tickets_fts(rowid, queue, summary, description) "
    "VALUES (new.id, new.queue, new.summary, new.description); END",
    "CREATE TRIGGER tickets_fts_delete AFTER DELETE ON tickets BEGIN "
    "INSERT INTO tickets_fts(tickets_fts, rowid, queue, summary, description) "
    "VALUES ('delete', old.id, old.queue, old.summary, old.description); END",
    "CREATE TRIGGER tickets_fts_update AFTER UPDATE OF queue, summary, description ON tickets BEGIN "
    "INSERT INTO tickets_fts(tickets_fts, rowid, queue, summary, description) "
    "VALUES ('delete', old.id, old.queue, old.summary, old.description); "
    "INSERT INTO tickets_fts(rowid, queue, summary, description) "
    "VALUES (new.id, new.queue, new.summary, new.description); END",
    # A ticket moved to another queue takes its comments along.
    "CREATE TRIGGER tickets_fts_queue AFTER UPDATE OF queue ON tickets BEGIN "
    "INSERT INTO comments_fts(comments_fts, rowid, queue, body) "
    "SELECT 'delete', id, old.queue, body FROM comments WHERE ticket_id = old.id; "
    "INSERT INTO comments_fts(rowid, queue, body) "
    "SELECT id, new.queue, body FROM comments WHERE ticket_id = new.id; END",
    "CREATE TRIGGER comments_fts_insert AFTER INSERT ON comments BEGIN "
    f"INSERT INTO comments_fts(rowid, queue, body) VALUES (new.id, {_QUEUE_OF.format('new')}, new.body); END",
    "CREATE TRIGGER comments_fts_delete AFTER DELETE ON comments BEGIN "
    "INSERT INTO comments_fts(comments_fts, rowid, queue, body) "
    f"VALUES ('delete', old.id, {_QUEUE_OF.format('old')}, old.body); END",
    "CREATE TRIGGER comments_fts_update AFTER UPDATE OF ticket_id, body ON comments BEGIN "
    "INSERT INTO comments_fts(comments_fts, rowid, queue, body) "
    f"VALUES ('delete', old.id, {_QUEUE_OF.format('old')}, old.body); "
    f"INSERT INTO comments_fts(rowid, queue, body) VALUES (new.id, {_QUEUE_OF.format('new')}, new.body); END",
    "INSERT INTO tickets_fts(tickets_fts) VALUES ('rebuild')",
    "INSERT INTO comments_fts(comments_fts) VALUES ('rebuild')",
]
_SQLITE_DOWN = [
    *(f"DROP TRIGGER {name}" for name in (
        "tickets_fts_insert", "tickets_fts_delete", "tickets_fts_update", "tickets_fts_queue",
        "comments_fts_insert", "comments_fts_delete", "comments_fts_update",
    )),
    "DROP TABLE comments_fts",
    "DROP TABLE tickets_fts",
    "DROP VIEW comments_search",
]
# A row's queue is one more lexeme of its vector, "§queue:" and the key: no
# text yields it (the parser never keeps "§" in a word), and a search ANDs the
# agent's queues into its tsquery, so GIN finds only their rows.
_QUEUE_LEXEME = "array_to_tsvector(ARRAY['§queue:' || {}])"
_COMMENT_VECTOR = (
    "to_tsvector('russian'::regconfig, left({row}.body, 100000)) || "
    + _QUEUE_LEXEME.format("COALESCE((SELECT queue FROM tickets WHERE id = {row}.ticket_id), '')")
)
_POSTGRES_UP = [
    "ALTER TABLE tickets ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ("
    "setweight(to_tsvector('russian'::regconfig, left(summary, 10000)), 'A') || "
    "setweight(to_tsvector('russian'::regconfig, left(description, 100000)), 'B') || "
    f"{_QUEUE_LEXEME.format('queue')}) STORED",
    # A generated column cannot read the ticket's queue: a trigger keeps it.
    "ALTER TABLE comments ADD COLUMN search_vector tsvector",
    "CREATE FUNCTION comments_search_vector() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    f"NEW.search_vector := {_COMMENT_VECTOR.format(row='NEW')}; RETURN NEW; END $$",
    "CREATE TRIGGER comments_search_vector BEFORE INSERT OR UPDATE OF body, ticket_id ON comments "
    "FOR EACH ROW EXECUTE FUNCTION comments_search_vector()",
    # A ticket moved to another queue takes its comments along.
    "CREATE FUNCTION tickets_search_queue() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "UPDATE comments SET body = body WHERE ticket_id = NEW.id; RETURN NULL; END $$",
    "CREATE TRIGGER tickets_search_queue AFTER UPDATE OF queue ON tickets FOR EACH ROW "
    "WHEN (OLD.queue IS DISTINCT FROM NEW.queue) EXECUTE FUNCTION tickets_search_queue()",
    f"UPDATE comments SET search_vector = {_COMMENT_VECTOR.format(row='comments')}",
    "CREATE INDEX ix_tickets_search_vector ON tickets USING gin (search_vector)",
    "CREATE INDEX ix_comments_search_vector ON comments USING gin (search_vector)",
]
_POSTGRES_DOWN = [
    "DROP TRIGGER tickets_search_queue ON tickets",
    "DROP FUNCTION tickets_search_queue()",
    "DROP TRIGGER comments_search_vector ON comments",
    "DROP FUNCTION comments_search_vector()",
    "DROP INDEX ix_comments_search_vector",
    "DROP INDEX ix_tickets_search_vector",
    "ALTER TABLE comments DROP COLUMN search_vector",
    "ALTER TABLE tickets DROP COLUMN search_vector",
]


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in _SQLITE_UP if sqlite else _POSTGRES_UP:
        op.execute(statement)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in _SQLITE_DOWN if sqlite else _POSTGRES_DOWN:
        op.execute(statement)
