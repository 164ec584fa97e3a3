//! `workspace list|show|new|select|delete`: separate states side by side in one backend.

use super::{EXIT_OK, WorkspaceCommand};
use crate::engine::{Engine, Error, Result, check_workspace_name};

pub async fn workspace(engine: &Engine, command: WorkspaceCommand) -> Result<i32> {
    let current = engine.workspace()?;
    match command {
        WorkspaceCommand::List => {
            for w in engine.workspaces().await? {
                let mark = if w == current { "*" } else { " " };
                say!("{mark} {w}");
            }
        }
        WorkspaceCommand::Show => say!("{current}"),
        WorkspaceCommand::New { name, lock } => {
            engine.new_workspace(&name, lock.options()).await?;
            say!("Created and switched to workspace {name:?}. Its state is empty.");
        }
        WorkspaceCommand::Select { name, or_create } => {
            check_workspace_name(&name)?;
            if or_create && !engine.workspaces().await?.contains(&name) {
                engine.new_workspace(&name, Default::default()).await?;
                say!("Created and switched to workspace {name:?}. Its state is empty.");
                return Ok(EXIT_OK);
            }
            if !engine.workspaces().await?.contains(&name) {
                return Err(Error::new(format!("there is no workspace {name:?}"))
                    .hint(format!("skyform workspace new {name}")));
            }
            engine.select_workspace(&name)?;
            say!("Switched to workspace {name:?}.");
        }
        WorkspaceCommand::Delete { name, force, lock } => {
            engine
                .delete_workspace(&name, force, lock.options())
                .await?;
            say!("Deleted workspace {name:?}.");
        }
    }
    Ok(EXIT_OK)
}
