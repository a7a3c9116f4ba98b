"""The execution service: containers and tasks (containerd's containers + tasks services, dockerd's container verbs)."""
