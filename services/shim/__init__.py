"""The per-container shim (containerd-shim-runc-v2's job): runs the OCI runtime, reaps, holds stdio and logs."""
