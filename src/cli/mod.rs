//! Command-line verbs; each file is one group of them.
pub mod client;
pub mod doctor;
pub mod exit;
pub mod export_client;
pub mod follow;
pub mod import;
pub mod score_client;
pub mod serve;
pub mod token;
pub mod train_client;
