package api

import (
	"testing"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestRolesAllowOnlyWhatTheyShould(t *testing.T) {
	const (
		admin    = captainv1.Role_ROLE_ADMIN
		deployer = captainv1.Role_ROLE_DEPLOYER
		viewer   = captainv1.Role_ROLE_VIEWER
		agent    = captainv1.Role_ROLE_AGENT
		none     = captainv1.Role_ROLE_UNSPECIFIED
	)
	tests := []struct {
		have, need captainv1.Role
		want       bool
	}{
		{admin, admin, true}, {admin, deployer, true}, {admin, viewer, true}, {admin, agent, true},
		{deployer, admin, false}, {deployer, deployer, true}, {deployer, viewer, true}, {deployer, agent, false},
		{viewer, admin, false}, {viewer, deployer, false}, {viewer, viewer, true}, {viewer, agent, false},
		{agent, admin, false}, {agent, deployer, false}, {agent, viewer, false}, {agent, agent, true},
		{none, viewer, false}, {none, anyValidToken, true}, {viewer, anyValidToken, true},
	}
	for _, tt := range tests {
		if got := allows(tt.have, tt.need); got != tt.want {
			t.Errorf("allows(%s, %s) = %v, want %v", tt.have, tt.need, got, tt.want)
		}
	}
}

func TestEveryServedProcedureHasARole(t *testing.T) {
	for proc, role := range minRole {
		if role == captainv1.Role_ROLE_UNSPECIFIED {
			t.Errorf("%s has no role", proc)
		}
	}
	if len(minRole) != 37 {
		t.Errorf("minRole lists %d procedures; update it (and this count) with every new RPC", len(minRole))
	}
}
