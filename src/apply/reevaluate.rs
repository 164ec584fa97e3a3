//! Values that were unknown when planning (`${cluster.dev.head_ip}`), evaluated again once
//! what they depend on exists.

use crate::model::{Address, Spec};
use crate::providers::ProviderError;
use crate::state::State;
use std::collections::BTreeMap;

/// Re-evaluates the configuration against a state: the specs of every instance.
pub type Reevaluate<'a> = dyn Fn(&State) -> BTreeMap<Address, Spec> + Send + Sync + 'a;

/// The specs of the last re-evaluation, kept until the state changes.
#[derive(Default)]
pub(super) struct LateSpecs {
    /// Whether `specs` were evaluated against the state as it is now.
    current: bool,
    specs: BTreeMap<Address, Spec>,
}

impl LateSpecs {
    /// The state changed: the next spec still unknown evaluates again.
    pub fn state_changed(&mut self) {
        self.current = false;
    }

    /// The spec `addr` is created or updated with: `planned` with its unknown values filled
    /// in, or an error when they are still unknown or its known values changed since.
    pub fn spec_for(
        &mut self,
        reevaluate: Option<&Reevaluate<'_>>,
        state: &State,
        addr: &Address,
        planned: &Spec,
    ) -> Result<Spec, ProviderError> {
        let Some(reevaluate) = reevaluate else {
            return Err(ProviderError::other(
                "values unknown at plan time cannot be resolved here",
            ));
        };
        // A spec evaluated once all it depends on was applied stays right; evaluate again
        // only for one that was still unknown (and only when the state has moved since).
        let settled = self.specs.get(addr).is_some_and(|f| {
            !crate::model::contains_unknown(&serde_json::Value::Object(f.attributes()))
        });
        if !settled && !self.current {
            self.specs = reevaluate(state);
            self.current = true;
        }
        let fresh = self.specs.get(addr).ok_or_else(|| {
            ProviderError::other("the configuration no longer declares this resource")
        })?;
        let (p, f) = (planned.attributes(), fresh.attributes());
        for (k, v) in &p {
            if crate::model::contains_unknown(v) {
                continue;
            }
            if f.get(k) != Some(v) {
                return Err(ProviderError::other(format!(
                    "{k} changed between plan and apply; make a new plan"
                )));
            }
        }
        if crate::model::contains_unknown(&serde_json::Value::Object(f)) {
            return Err(ProviderError::other(
                "a value is still unknown after everything it depends on was applied",
            ));
        }
        Ok(fresh.clone())
    }
}
