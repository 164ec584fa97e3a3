//! `skyform console`: expressions evaluated against the configuration and state.

use crate::engine::{Engine, Error, Result};

pub async fn run(engine: &Engine) -> Result<i32> {
    engine.require_valid()?;
    Err(Error::new("console is not available in this build yet"))
}
