cluster "head" {
  envs = { WORKER_IP = cluster.worker.head_ip }
}

cluster "worker" {
  envs = { PS_IP = cluster.ps.head_ip }
}

cluster "ps" {
  depends_on = [cluster.head]
}
