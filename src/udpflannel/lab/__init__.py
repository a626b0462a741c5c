"""The namespace lab: a tool built on the product's public interfaces, never imported by the
product (cli.py loads it only when `udpflannel lab` runs).

The bed that `udpflannel lab`, tests/ and bench/ share:
  netlab.py    network namespaces: hosts on an underlay bridge, etcd members, containers
  agents.py    udpflannel agents on the bed's hosts, and what tests and benches read of them
  etcdfill.py  many leases, or any bytes, put into etcd fast (`python -m udpflannel.lab.etcdfill`)
  dppair.py    the data path's own bed: two namespaces, a DataPath process in each
  dockerd.py   a real dockerd per host namespace
`udpflannel lab`:
  tutorial.py  the flannel tutorial's steps, run on the bed and printed
  state.py     the labs on this machine, kept or crashed (state files, teardown)
  command.py   its command line
"""
