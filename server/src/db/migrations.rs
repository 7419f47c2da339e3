//! The schema migrations: one template per migration (`server/migrations/`), rendered
//! for each database. The databases differ only in the slots filled in here.

use sqlx::migrate::{Migration, MigrationType};

use super::sql::Dialect;

/// The migrations, oldest first: version, description, template.
const TEMPLATES: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (2, "packs", include_str!("../../migrations/0002_packs.sql")),
    (
        3,
        "refresh families",
        include_str!("../../migrations/0003_refresh_families.sql"),
    ),
    (
        4,
        "rename history",
        include_str!("../../migrations/0004_rename_history.sql"),
    ),
    (
        5,
        "manifest pages",
        include_str!("../../migrations/0005_manifest_pages.sql"),
    ),
    (
        6,
        "accounts admin",
        include_str!("../../migrations/0006_accounts_admin.sql"),
    ),
];

/// A template for `dialect`: its `--!` lines (notes on the template) dropped and its
/// `{{…}}` slots filled in.
fn render(template: &str, dialect: Dialect) -> String {
    // The first line of each rendered script is the header it was first applied with:
    // part of the checksum sqlx keeps.
    let (header, path_type, serial_key, blob, without_rowid) = match dialect {
        Dialect::Sqlite => (
            "-- fsync metadata schema (SQLite). Keep in step with ../postgres/0001_init.sql.",
            "TEXT",
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            "BLOB",
            " WITHOUT ROWID",
        ),
        Dialect::Postgres => (
            "-- fsync metadata schema (PostgreSQL). Keep in step with ../sqlite/0001_init.sql.",
            "TEXT COLLATE \"C\"",
            "BIGSERIAL PRIMARY KEY",
            "BYTEA",
            "",
        ),
    };
    template
        .split_inclusive('\n')
        .filter(|line| !line.starts_with("--!"))
        .collect::<String>()
        .replace("{{header}}", header)
        .replace("{{path_type}}", path_type)
        .replace("{{serial_key}}", serial_key)
        .replace("{{blob}}", blob)
        .replace("{{without_rowid}}", without_rowid)
}

/// The migrations for `dialect`, as sqlx's migrator takes them.
pub(super) fn for_dialect(dialect: Dialect) -> Vec<Migration> {
    TEMPLATES
        .iter()
        .map(|(version, description, template)| {
            Migration::new(
                *version,
                std::borrow::Cow::Borrowed(*description),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(render(template, dialect))),
                false,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksums (SHA-384) the databases in use recorded when they applied each
    /// migration: a changed script would be refused at start.
    #[test]
    fn applied_migrations_keep_their_checksums() {
        let pinned = [
            (
                Dialect::Sqlite,
                "e3277f5d46c52dc37f7b599ccaffc7a80d65120d05d476b683900a644f0079e6cd03f437e0240f69a59d555ce47139e3",
            ),
            (
                Dialect::Postgres,
                "8faa6b7bfe735653b579fbaa702319407741c863d015dd96ffb798726e85c3e432a069c2e28db636efdd20b8da599dc7",
            ),
        ];
        for (dialect, checksum) in pinned {
            let m = &for_dialect(dialect)[0];
            assert_eq!(hex::encode(&*m.checksum), checksum, "{dialect:?}");
        }
    }

    #[test]
    fn every_slot_is_filled() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            for (_, _, template) in TEMPLATES {
                let sql = render(template, dialect);
                assert!(!sql.contains("{{") && !sql.contains("--!"), "{dialect:?}");
            }
        }
    }
}
