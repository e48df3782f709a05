pub mod cache;
pub mod fetch;
pub mod signature;
