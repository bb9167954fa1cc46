//! The shared users file (Dovecot passwd-file format), password verification, SASL decoding
//! and the brute-force guard.
