//! Expressions evaluated against the configuration and the state, for `skyform console`.
//! Each expression becomes a hidden root output and the planner evaluates it (offline: no
//! refresh, no lock), so it sees exactly what `plan` sees — variables, locals, functions,
//! resource attributes known from state; values only an apply would know stay unknown.

use super::{Engine, Result};
use crate::config::decl::{BodyDecl, OutputDecl, attr_decl};
use crate::config::diag::{Diagnostics, Severity, Sources};

/// The hidden output an expression is evaluated as.
const NAME: &str = "__console";

/// What one expression gave.
#[derive(Debug)]
pub enum Evaluated {
    Value(serde_json::Value),
    /// Derived from a sensitive value: shown masked.
    Sensitive,
    /// The line is not one expression.
    NotAnExpression(String),
    /// Errors, with the sources to render them (the expression's line among them).
    Errors(Diagnostics, Sources),
}

/// The state and offerings expressions are evaluated against, read once.
pub struct Console<'e> {
    engine: &'e Engine,
    state: crate::state::State,
    offerings: Vec<crate::optimizer::Offering>,
}

impl std::fmt::Debug for Console<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("resources", &self.state.resources.len())
            .field("offerings", &self.offerings.len())
            .finish()
    }
}

impl Engine {
    /// Reads what `console` evaluates against: the state (empty before the first apply) and
    /// the offerings (without catalogs, cloud attributes are just unknown).
    pub async fn console(&self) -> Result<Console<'_>> {
        self.require_valid()?;
        let state = self.read_state().await.unwrap_or_default();
        let offerings = match self.offerings(true).await {
            Ok((o, _)) => o,
            Err(_) => self.offerings(false).await?.0,
        };
        Ok(Console {
            engine: self,
            state,
            offerings,
        })
    }
}

impl Console<'_> {
    pub fn eval(&self, expr: &str) -> Evaluated {
        let mut config = self.engine.config().clone();
        let text = format!("value = {expr}\n");
        let body = match hcl_edit::parser::parse_body(&text) {
            Ok(b) => b,
            Err(e) => return Evaluated::NotAnExpression(e.message().to_string()),
        };
        let mut attrs = body.attributes();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Evaluated::NotAnExpression("one expression a line".into());
        };
        let file = config.sources.add("<console>", text.clone());
        let mut decl = BodyDecl::default();
        decl.attrs.insert("value".into(), attr_decl(file, attr));
        config.root.outputs.insert(
            NAME.into(),
            OutputDecl {
                name: NAME.into(),
                file,
                span: 0..0,
                body: decl,
            },
        );
        let (plan, diags) = crate::plan::plan(
            &config,
            self.engine.inputs(),
            &self.state,
            &self.offerings,
            &crate::plan::Options::default(),
        );
        if diags.has_errors() {
            // An output refuses a value derived from a sensitive one; Terraform's console
            // prints such a value masked.
            let sensitive = diags.error_count() == 1
                && diags.items.iter().any(|d| {
                    d.severity == Severity::Error && d.message.ends_with("shows a sensitive value")
                });
            if sensitive {
                return Evaluated::Sensitive;
            }
            let mut errors = diags;
            errors.items.retain(|d| d.severity == Severity::Error);
            return Evaluated::Errors(errors, config.sources);
        }
        Evaluated::Value(
            plan.outputs
                .get(NAME)
                .and_then(|o| o.after.clone())
                .unwrap_or(serde_json::Value::Null),
        )
    }
}
