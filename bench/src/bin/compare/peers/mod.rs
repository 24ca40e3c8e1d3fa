//! One module per peer, each implementing [`super::peer::Peer`] and [`super::peer::Engine`].

pub mod ceiling;
pub mod fjall;
pub mod idem;
pub mod moka;
pub mod redb;
pub mod redis;
pub mod sled;
