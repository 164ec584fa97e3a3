//! Pure data: addresses, resource specs and requests. No IO, no async.

pub mod address;
pub mod backend;
pub mod host;
pub mod request;
pub mod spec;

pub use address::{Address, InstanceKey, Kind, ModulePath, ModuleStep};
pub use host::Host;
pub use request::{Accelerator, Accelerators, Cpus, Memory, RequestError};
pub use spec::{
    Autostop, ClusterSpec, ControllerSpec, Effect, JobSpec, LbPolicy, Lifecycle, ManagedJobSpec,
    ReadinessProbe, Recovery, ReplicaPolicy, Resources, ServiceSpec, Spec, UNKNOWN, UpdateMode,
    contains_unknown,
};
