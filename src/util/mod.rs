//! Small utilities every layer may use; nothing here imports a feature module.

pub mod form;
pub mod hex_id;
pub mod registry;
