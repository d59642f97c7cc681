"""ClusterPKIs in the Kubernetes API: the request transport, the contract's Secret layout, the
Secret store, the Secret watch and a timer queue, shared by the controller, the CSR handlers and
the CLI."""
