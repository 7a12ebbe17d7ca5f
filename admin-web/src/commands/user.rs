//! `bento user add|passwd|list|remove`: accounts of the web panel.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::serve::{block_on, cli_actor, database_url};
use crate::web::{audit, auth, db};

#[derive(Debug, clap::Subcommand)]
pub enum UserAction {
    /// Create a user (asks for the password, or reads it from stdin).
    Add(UserArgs),
    /// Set a user's password; ends the user's sessions.
    Passwd(UserArgs),
    /// List users.
    List {
        #[arg(long)]
        database: Option<String>,
    },
    /// Remove a user and end its sessions.
    Remove {
        name: String,
        #[arg(long)]
        database: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct UserArgs {
    /// User name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Read the password from the first line of stdin instead of asking.
    #[arg(long)]
    pub password_stdin: bool,
    #[arg(long)]
    pub database: Option<String>,
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    {
        bail!("invalid user name {name:?}: use 1 to 64 letters, digits, '.', '_', '-' or '@'");
    }
    Ok(())
}

/// The new password: from stdin, or asked twice on the terminal.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let pw = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        let a = rpassword::prompt_password("New password: ")?;
        let b = rpassword::prompt_password("Again: ")?;
        if a != b {
            bail!("the passwords differ");
        }
        a
    };
    if pw.chars().count() < 8 {
        bail!("the password is too short: use at least 8 characters");
    }
    Ok(pw)
}

pub fn run(dir: Option<PathBuf>, action: UserAction) -> anyhow::Result<ExitCode> {
    match action {
        UserAction::Add(a) => return set(dir, a, true),
        UserAction::Passwd(a) => return set(dir, a, false),
        UserAction::List { database } => {
            let url = database_url(dir, database)?;
            let rows = block_on(async move {
                let pool = db::open(&url).await?;
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                    "SELECT u.name, u.created_at, (SELECT COUNT(*) FROM sessions s WHERE s.user_id = u.id) \
                     FROM users u ORDER BY u.name",
                )
                .fetch_all(&pool)
                .await?;
                Ok(rows)
            })?;
            if rows.is_empty() {
                println!("No user yet: create one with `bento user add NAME`.");
            }
            for (name, created, sessions) in rows {
                println!(
                    "{name}\tcreated {}\t{sessions} session(s)",
                    crate::web::views::full_time_ms(Some(created))
                );
            }
        }
        UserAction::Remove { name, database } => {
            let url = database_url(dir, database)?;
            block_on(async move {
                let pool = db::open(&url).await?;
                let r = sqlx::query("DELETE FROM users WHERE name = ?")
                    .bind(&name)
                    .execute(&pool)
                    .await?;
                if r.rows_affected() == 0 {
                    bail!("no user {name:?}");
                }
                audit::record(&pool, &cli_actor(), "user-remove", &name, "", "cli").await?;
                eprintln!("Removed user {name}.");
                Ok(())
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn set(dir: Option<PathBuf>, a: UserArgs, create: bool) -> anyhow::Result<ExitCode> {
    check_name(&a.name)?;
    let url = database_url(dir, a.database)?;
    let pw = read_password(a.password_stdin)?;
    block_on(async move {
        let pool = db::open(&url).await?;
        auth::set_password(&pool, &a.name, &pw, create)
            .await
            .context("cannot save the user")?;
        let action = if create { "user-add" } else { "user-passwd" };
        audit::record(&pool, &cli_actor(), action, &a.name, "", "cli").await?;
        if create {
            eprintln!("Created user {}.", a.name);
        } else {
            eprintln!("Changed the password of {} (its sessions ended).", a.name);
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
