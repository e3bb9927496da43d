pub mod keygen;
pub mod store;
