"""The index schema, shared by both backends: tables, columns and versioned migrations.

Each entry of ``MIGRATIONS`` takes the schema from version ``i`` to ``i + 1``; SQLite records
the version in ``PRAGMA user_version``, PostgreSQL in the ``docwatch_schema`` table.  The DDL is
written once in the subset both engines accept (PostgreSQL reads ``INTEGER`` as ``BIGINT``:
nanosecond times do not fit 32 bits); ``SQLITE_ONLY`` holds what only an SQLite index written
by an older docwatch needs (backfills from its existing rows).
"""

from __future__ import annotations

DOCUMENT_COLUMNS = (
    "doc_id",
    "logical_key_id",
    "stage",
    "task_id",
    "parent_doc_id",
    "template_id",
    "model_id",
    "run_id",
    "prompt_path",
    "parser",
    "status",
    "usage_prompt_tokens",
    "usage_completion_tokens",
    "usage_max_tokens",
    "created_at",
    "doc_dir",
    "raw_chars",
    "parsed_chars",
    "meta_small",
    "lineage_prev_doc_id",
)

#: Columns of ``documents`` beyond the seed's, never in a reader's row: the attempt's version,
#: copied from ``attempts`` so that "latest" is one seek in ``idx_documents_latest``, with no
#: join and no sort (it never changes once a document exists).
DOCUMENT_ORDER_COLUMNS = ("version",)

#: Per-document facts the model needs that are not seed columns.
ATTEMPT_COLUMNS = (
    "doc_id",
    "version",
    "created_at_ns",
    "parent_stage",
    "parent_task_id",
    "parent_ref_ns",
    "raw_key",
    "parsed_key",
    "prompt_key",
    "info_hash",
)

#: The ledger: a source is (relpath, sha256); size and mtime_ns are pinned at first ingestion,
#: seen_size and seen_mtime_ns are the last stat that showed those bytes (the no-read skip).
SOURCE_COLUMNS = ("relpath", "sha256", "stage", "kind", "task_id", "version", "size", "mtime_ns")

#: Sticky task facts (SPEC "Identity and links"), one row per task with documents.
TASK_COLUMNS = (
    "stage",
    "task_id",
    "template_id",
    "model_id",
    "parser",
    "generator",
    "parent_stage",
    "parent_task_id",
    "provider",
    "from_tables",
    "info_hash",
    "tables_digest",
)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE documents (
      doc_id TEXT PRIMARY KEY,
      logical_key_id TEXT,
      stage TEXT,
      task_id TEXT,
      parent_doc_id TEXT,
      template_id TEXT,
      model_id TEXT,
      run_id TEXT,
      prompt_path TEXT,
      parser TEXT,
      status TEXT,
      usage_prompt_tokens INTEGER,
      usage_completion_tokens INTEGER,
      usage_max_tokens INTEGER,
      created_at TEXT,
      doc_dir TEXT,
      raw_chars INTEGER,
      parsed_chars INTEGER,
      meta_small TEXT,
      lineage_prev_doc_id TEXT
    );
    CREATE INDEX idx_documents_logical ON documents(logical_key_id, created_at);
    CREATE INDEX idx_documents_stage ON documents(stage, created_at);
    CREATE INDEX idx_documents_task ON documents(stage, task_id, created_at);
    -- Per-document facts the model needs that are not seed columns.
    CREATE TABLE attempts (
      doc_id TEXT PRIMARY KEY,
      version INTEGER NOT NULL,
      created_at_ns INTEGER NOT NULL,
      parent_stage TEXT,
      parent_task_id TEXT,
      parent_ref_ns INTEGER,
      raw_key TEXT,
      parsed_key TEXT,
      prompt_key TEXT
    );
    CREATE INDEX idx_attempts_parent ON attempts(parent_stage, parent_task_id);
    -- The ledger: every source version ingested, so re-runs skip without reading files.
    CREATE TABLE sources (
      relpath TEXT NOT NULL,
      sha256 TEXT NOT NULL,
      stage TEXT NOT NULL,
      kind TEXT NOT NULL,
      task_id TEXT NOT NULL,
      version INTEGER NOT NULL,
      size INTEGER NOT NULL,
      mtime_ns INTEGER NOT NULL,
      ingested_at TEXT NOT NULL,
      PRIMARY KEY (relpath, sha256)
    );
    CREATE INDEX idx_sources_task ON sources(stage, task_id);
    -- Sources that could not be ingested, with the reason (cleared when ingested).
    CREATE TABLE problems (
      relpath TEXT PRIMARY KEY,
      reason TEXT NOT NULL,
      seen_at TEXT NOT NULL
    );
    -- Documents a batch is about to create or change (cleared by its commit).
    CREATE TABLE intents (
      doc_id TEXT PRIMARY KEY,
      stage TEXT NOT NULL,
      task_id TEXT NOT NULL,
      op TEXT NOT NULL
    );
    CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT);
    """,
    # v2: what the task tables said when a document was planned, to re-plan on a change.
    """
    ALTER TABLE attempts ADD COLUMN info_hash TEXT;
    """,
    # v3: identity pinned at first sight (the ledger's stat cache apart from the pinned facts),
    # sticky task facts, intents that carry what recovery needs to finish or undo an update,
    # late links for parents of an unknown stage, and the readers' lookup without a sort.
    """
    ALTER TABLE sources ADD COLUMN seen_size INTEGER;
    ALTER TABLE sources ADD COLUMN seen_mtime_ns INTEGER;
    UPDATE sources SET seen_size = size, seen_mtime_ns = mtime_ns;
    CREATE TABLE tasks (
      stage TEXT NOT NULL,
      task_id TEXT NOT NULL,
      template_id TEXT,
      model_id TEXT,
      parser TEXT,
      generator TEXT,
      parent_stage TEXT,
      parent_task_id TEXT,
      provider TEXT,
      from_tables INTEGER NOT NULL DEFAULT 0,
      info_hash TEXT,
      PRIMARY KEY (stage, task_id)
    );
    ALTER TABLE intents ADD COLUMN phase TEXT NOT NULL DEFAULT 'staged';
    ALTER TABLE intents ADD COLUMN writer TEXT NOT NULL DEFAULT '';
    ALTER TABLE intents ADD COLUMN detail TEXT;
    CREATE INDEX idx_attempts_parent_task ON attempts(parent_task_id);
    CREATE INDEX idx_documents_reader ON documents(stage, task_id, status, created_at);
    """,
    # v4: the task tables each task's facts were last checked against (a re-scan with the same
    # tables skips the check: ``Index.task_facts_not_from``).
    """
    ALTER TABLE tasks ADD COLUMN tables_digest TEXT;
    """,
    # v5: the readers' "latest" in the model's order straight from one index (no join, no
    # sort): the attempt's version beside the row, and an index in that order.
    """
    ALTER TABLE documents ADD COLUMN version INTEGER;
    UPDATE documents SET version = (SELECT a.version FROM attempts a
      WHERE a.doc_id = documents.doc_id);
    CREATE INDEX idx_documents_latest ON documents(stage, task_id, status, (version <> 0),
      created_at, version, doc_id);
    CREATE INDEX idx_documents_latest_logical ON documents(logical_key_id, status,
      (version <> 0), created_at, version, doc_id);
    DROP INDEX idx_documents_reader;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

#: SQLite's own statements of a migration step (every SQLite index): the ledger's listing
#: reads (relpath, sha256, seen_size, seen_mtime_ns) in relpath order, and a covering index
#: serves it without touching the table (PostgreSQL sorts that listing in byte order, which
#: its default-collation indexes do not serve either way).
SQLITE_DDL: dict[int, str] = {
    4: """
    CREATE INDEX idx_sources_seen ON sources(relpath, sha256, seen_size, seen_mtime_ns);
    """,
}

#: Extra statements after a migration step, for SQLite indexes that hold rows already.
SQLITE_ONLY: dict[int, str] = {
    3: """
    INSERT OR IGNORE INTO tasks (stage, task_id, template_id, model_id, parser, generator,
      parent_stage, parent_task_id, provider, from_tables, info_hash)
    SELECT d.stage, d.task_id, d.template_id, d.model_id, d.parser,
      json_extract(d.meta_small, '$.generator'), a.parent_stage, a.parent_task_id,
      json_extract(d.meta_small, '$.provider'), 1, a.info_hash
    FROM documents d JOIN attempts a USING (doc_id)
    """,
}


def statements(script: str) -> list[str]:
    """The statements of a migration script (no statement contains a semicolon)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
