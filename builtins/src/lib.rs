//! Native built-in functions that tenants call by name like their own Python functions.
//!
//! Built-ins are resolved before a tenant's own modules and only for tenants whose policy
//! allows them. The first one, the streaming zip → CSV → reshape → S3 job
//! (`read_zip_csv_chunk.read_zip_csv_chunk`), is not implemented yet: until it is, its name is
//! reserved here so that no tenant module can be mistaken for it, and calls to it answer
//! `fn_not_found` like any other missing function.

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
