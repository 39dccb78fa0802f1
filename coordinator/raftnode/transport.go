package raftnode

import (
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// streamLayer is raft's transport over TCP, or over mutual TLS when tlsConf is set: then a
// peer without a certificate from the cluster CA can neither dial in nor be dialed.
type streamLayer struct {
	net.Listener
	advertise net.Addr
	tlsConf   *tls.Config
}

func newStreamLayer(bind, advertise string, tlsConf *tls.Config) (*streamLayer, error) {
	var ln net.Listener
	var err error
	if tlsConf != nil {
		server := tlsConf.Clone()
		server.ClientAuth = tls.RequireAndVerifyClientCert
		ln, err = tls.Listen("tcp", bind, server)
	} else {
		ln, err = net.Listen("tcp", bind)
	}
	if err != nil {
		return nil, fmt.Errorf("listen for raft on %s: %w", bind, err)
	}
	adv := ln.Addr()
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("raft advertise address %q: %w", advertise, err)
		}
		adv = a
	}
	if tcp, ok := adv.(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("raft address %s is not reachable by peers: set a concrete --raft-addr or --raft-advertise", adv)
	}
	return &streamLayer{Listener: ln, advertise: adv, tlsConf: tlsConf}, nil
}

func (s *streamLayer) Addr() net.Addr { return s.advertise }

func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if s.tlsConf == nil {
		return d.Dial("tcp", string(address))
	}
	client := s.tlsConf.Clone()
	if client.ServerName == "" {
		host, _, err := net.SplitHostPort(string(address))
		if err == nil {
			client.ServerName = host
		}
	}
	return tls.DialWithDialer(d, "tcp", string(address), client)
}
