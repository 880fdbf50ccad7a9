module wakegate.bench/loadgen

go 1.21
