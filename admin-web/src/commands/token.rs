//! `bento token add|list|revoke`: bearer tokens for the panel's API and `/metrics`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use super::serve::{block_on, cli_actor, database_url};
use crate::web::db::now_ms;
use crate::web::{audit, auth, db, views};

#[derive(Debug, clap::Subcommand)]
pub enum TokenAction {
    /// Create a token and print it (once: only its hash is kept).
    Add {
        /// A name saying who uses it (`prometheus`, `ci`).
        name: String,
        #[arg(long)]
        database: Option<String>,
    },
    /// List tokens (names, not values).
    List {
        #[arg(long)]
        database: Option<String>,
    },
    /// Revoke a token by name.
    Revoke {
        name: String,
        #[arg(long)]
        database: Option<String>,
    },
}

pub fn run(dir: Option<PathBuf>, action: TokenAction) -> anyhow::Result<ExitCode> {
    match action {
        TokenAction::Add { name, database } => {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                bail!("invalid token name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-'");
            }
            let url = database_url(dir, database)?;
            let token = format!("bento_{}", auth::random_token());
            let t = token.clone();
            block_on(async move {
                let pool = db::open(&url).await?;
                let r = sqlx::query(
                    "INSERT INTO api_tokens (name, token_hash, created_at, created_by) VALUES (?, ?, ?, ?)",
                )
                .bind(&name)
                .bind(auth::sha256_hex(&t))
                .bind(now_ms())
                .bind(cli_actor())
                .execute(&pool)
                .await;
                match r {
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        bail!("a token named {name:?} exists already (revoke it first, or pick another name)")
                    }
                    r => r?,
                };
                audit::record(&pool, &cli_actor(), "token-add", &name, "", "cli").await?;
                Ok(())
            })?;
            eprintln!(
                "Token created; use it as `Authorization: Bearer TOKEN`. It is shown only now:"
            );
            println!("{token}");
        }
        TokenAction::List { database } => {
            let url = database_url(dir, database)?;
            let rows = block_on(async move {
                let pool = db::open(&url).await?;
                let rows: Vec<(String, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
                    "SELECT name, created_at, last_used, revoked_at FROM api_tokens ORDER BY name",
                )
                .fetch_all(&pool)
                .await?;
                Ok(rows)
            })?;
            if rows.is_empty() {
                println!("No token: create one with `bento token add NAME`.");
            }
            for (name, created, used, revoked) in rows {
                let state = match revoked {
                    Some(r) => format!("revoked {}", views::full_time_ms(Some(r))),
                    None => "active".into(),
                };
                let used = used
                    .map(|u| format!("last used {}", views::full_time_ms(Some(u))))
                    .unwrap_or_else(|| "never used".into());
                println!(
                    "{name}\t{state}\tcreated {}\t{used}",
                    views::full_time_ms(Some(created))
                );
            }
        }
        TokenAction::Revoke { name, database } => {
            let url = database_url(dir, database)?;
            block_on(async move {
                let pool = db::open(&url).await?;
                let r = sqlx::query(
                    "UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                )
                .bind(now_ms())
                .bind(&name)
                .execute(&pool)
                .await?;
                if r.rows_affected() == 0 {
                    bail!("no active token named {name:?}");
                }
                audit::record(&pool, &cli_actor(), "token-revoke", &name, "", "cli").await?;
                eprintln!("Revoked token {name}.");
                Ok(())
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
