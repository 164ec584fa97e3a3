//! State surgery: `state list|show|rm|mv|pull|push` and `force-unlock`.

use super::report::{Terminal, ask};
use super::{EXIT_ERROR, EXIT_OK, StateCommand};
use crate::engine::{Engine, Error, Result, parse_addresses};

pub async fn state(engine: &Engine, cmd: StateCommand) -> Result<i32> {
    match cmd {
        StateCommand::List => {
            for a in engine.read_state().await?.resources.keys() {
                say!("{a}");
            }
        }
        StateCommand::Show { address } => {
            let addr = parse_addresses(&[address])?.remove(0);
            let state = engine.read_state().await?;
            if !state.resources.contains_key(&addr) {
                return Err(Error::new(format!("{addr} is not in state"))
                    .hint("list addresses with `skyform state list`"));
            }
            let one = crate::render::json::state(&state)
                .get("resources")
                .and_then(|r| r.get(addr.to_string()))
                .cloned()
                .unwrap_or_default();
            say!("{}", serde_json::to_string_pretty(&one).unwrap_or_default());
        }
        StateCommand::Rm {
            address,
            dry_run,
            lock,
        } => {
            let addr = parse_addresses(&[address])?.remove(0);
            if dry_run {
                require_in_state(engine, &addr).await?;
                say!("Would remove {addr}");
            } else {
                say!("{}", engine.state_rm(&addr, lock.options()).await?);
            }
        }
        StateCommand::Mv {
            from,
            to,
            dry_run,
            lock,
        } => {
            let mut both = parse_addresses(&[from, to])?;
            let to = both.remove(1);
            let from = both.remove(0);
            if dry_run {
                require_in_state(engine, &from).await?;
                say!("Would move {from} to {to}");
            } else {
                say!("{}", engine.state_mv(&from, &to, lock.options()).await?);
            }
        }
        StateCommand::Pull => {
            let state = engine.read_state().await?;
            say_inline!("{}", String::from_utf8_lossy(&state.to_json()));
        }
        StateCommand::Push { file, force, lock } => {
            say!("{}", engine.state_push(&file, force, lock.options()).await?);
        }
    }
    Ok(EXIT_OK)
}

/// `-dry-run`: the address must be in state, as for the real thing.
async fn require_in_state(engine: &Engine, addr: &crate::model::Address) -> Result<()> {
    if engine.read_state().await?.resources.contains_key(addr) {
        Ok(())
    } else {
        Err(Error::new(format!("{addr} is not in state"))
            .hint("list addresses with `skyform state list`"))
    }
}

pub async fn force_unlock(engine: &Engine, term: &Terminal, id: &str, force: bool) -> Result<i32> {
    let holder = engine.lock_holder(id).await?;
    say!(
        "The lock is held by {} ({}) since {}.",
        holder.who,
        holder.operation,
        holder.created
    );
    if !force {
        if !term.tty_in {
            return Err(Error::new(
                "force-unlock needs confirmation, and there is no terminal to ask",
            )
            .hint("pass -force if you are sure that run is dead"));
        }
        if !ask("Remove it? Only 'yes' will be accepted: ") {
            say!("Kept the lock.");
            return Ok(EXIT_ERROR);
        }
    }
    engine.unlock(&holder).await?;
    say!("Removed the lock.");
    Ok(EXIT_OK)
}
