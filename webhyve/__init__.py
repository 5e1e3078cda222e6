"""webhyve's front ends, each entering the engine by its one door (engine/door): web/ (the Flask app and its
REST API and Socket.IO namespaces), cli/ (vmmctl), demos/ (scenarios that run themselves), and sessions/ (the
VMs a server or a demo runs: output pumps, the server terminal, recordings, screenshots)."""
