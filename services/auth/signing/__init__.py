"""Signing keys that rotate without a restart: the key folder, the rotation state in etcd, and
the key ring each auth replica signs with (README, "Rotating the signing key")."""
