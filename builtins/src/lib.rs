//! Native built-in functions that tenants call by name like their own Python functions.
//!
//! Built-ins are resolved before a tenant's own modules and only for tenants whose policy
//! allows them (`"builtins": true`). Their module names are reserved, so no tenant module can
//! be mistaken for one. The first is the streaming zip → CSV → reshape → S3 job
//! (`read_zip_csv_chunk.read_zip_csv_chunk`, in [`etl`]).

pub mod etl;

/// The built-in functions, as `fn` names them.
pub const FUNCTIONS: &[&str] = &["read_zip_csv_chunk.read_zip_csv_chunk"];

/// Names of functions that belong to Falra, not to any tenant's code.
pub const RESERVED_MODULES: &[&str] = &["read_zip_csv_chunk"];

/// Whether `module` is a built-in's module name.
pub fn is_reserved_module(module: &str) -> bool {
    RESERVED_MODULES.contains(&module)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seed_job_name_is_reserved() {
        assert!(super::is_reserved_module("read_zip_csv_chunk"));
        assert!(!super::is_reserved_module("falra_test_add"));
    }
}
