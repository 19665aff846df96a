module orchestrator.example/backend

go 1.19
