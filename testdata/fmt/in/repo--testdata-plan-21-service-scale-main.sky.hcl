# A change of the replica policy alone scales the service in place; the plan shows the new
# range and what it costs at each end.
service "web" {
  run = "python3 -m http.server $PORT"
  replica_policy {
    min_replicas           = 2
    max_replicas           = 5
    target_qps_per_replica = 20
  }
}
