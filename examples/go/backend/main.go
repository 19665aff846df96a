// The backend of the original two-tier example: for a POSTed JSON
// {"message": M} it answers {"message": GREETING, "data": M}.
//
// It listens on $PORT (set by the orchestrator) and reads its greeting from
// $GREETING (default "Hello Python!"). GET /backend?message=M answers the same
// way, GET /healthz answers 200 for probes, and GET /whoami tells which
// replica answered. Standard library only.
package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"
)

type request struct {
	Message json.RawMessage `json:"message"`
}

type response struct {
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	greeting := os.Getenv("GREETING")
	if greeting == "" {
		greeting = "Hello Python!"
	}

	http.HandleFunc("/backend", func(w http.ResponseWriter, r *http.Request) {
		var in request
		switch r.Method {
		case http.MethodPost:
			if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Message == nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "expected a JSON object with `message`"})
				return
			}
		case http.MethodGet:
			quoted, _ := json.Marshal(r.URL.Query().Get("message"))
			in.Message = quoted
		default:
			writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use POST or GET"})
			return
		}
		writeJSON(w, http.StatusOK, response{Message: greeting, Data: in.Message})
	})
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	http.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"tier": os.Getenv("ORCH_TIER"), "replica": os.Getenv("ORCH_REPLICA")})
	})

	addr := "127.0.0.1:" + port
	log.Printf("backend listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		log.Printf("writing the response: %v", err)
	}
}
