// Observing many network namespaces in ONE process. iproute2 cannot look into another namespace without
// a process per namespace (nsenter, `ip -n`, `ip netns exec`: each forks and execs, ~5 ms idle and
// 30+ ms on a loaded machine, so 500 VM netns cost seconds). This small Perl program (perl-base is
// part of every Debian-like system) does what such a process does, for all of them in turn: setns(2)
// into the namespace, read its disable_ipv6 sysctls, and dump links, addresses and IPv4 main-table
// routes over one rtnetlink socket opened there. It prints exactly what the sh + `ip -d -j -batch`
// observe script prints (the same markers, and JSON arrays with the fields of `ip -j` that the parser
// reads), so one parser serves both; the sh script stays as the fallback where perl or setns is missing.
// Names arrive as arguments, never inside the program text.

export const NETLINK_OBSERVE_PERL = String.raw`
use strict;
use warnings;
use Socket qw(AF_INET AF_INET6 SOCK_RAW inet_ntop);
use Config;

my %SETNS = (x86_64 => 308, aarch64 => 268, arm => 375, i386 => 346, i686 => 346, ppc64le => 350, s390x => 339, riscv64 => 268);
my ($arch) = $Config{archname} =~ /^([^-]+)/;
my $SYS_setns = $SETNS{$arch // ''};
if (!defined $SYS_setns) { print "\@\@unsupported\n"; exit 3; }
my $CLONE_NEWNET = 0x40000000;
my $AF_NETLINK = 16;
my %PROTO = (0 => 'unspec', 1 => 'redirect', 2 => 'kernel', 3 => 'boot', 4 => 'static', 8 => 'gated', 9 => 'ra', 10 => 'mrt', 11 => 'zebra', 12 => 'bird', 13 => 'dnrouted', 14 => 'xorp', 15 => 'ntk', 16 => 'dhcp', 17 => 'mrouted', 18 => 'keepalived', 42 => 'babel', 99 => 'openr', 186 => 'bgp', 187 => 'isis', 188 => 'ospf', 189 => 'rip', 192 => 'eigrp');
my @RTYPE = qw(unspec unicast local broadcast anycast multicast blackhole unreachable prohibit throw nat xresolve);
my %SCOPE = (0 => 'global', 200 => 'site', 253 => 'link', 254 => 'host', 255 => 'nowhere');
$| = 0;

sub jstr {
  my $s = shift;
  $s =~ s/(["\\])/\\$1/g;
  $s =~ s/([\x00-\x1f\x7f])/sprintf('\\u%04x', ord $1)/ge;
  return "\"$s\"";
}

sub attrs {
  my ($buf, $off) = @_;
  my %a;
  while ($off + 4 <= length $buf) {
    my ($len, $type) = unpack 'S S', substr($buf, $off, 4);
    last if $len < 4 || $off + $len > length $buf;
    $a{$type & 0x3fff} = substr($buf, $off + 4, $len - 4);
    $off += ($len + 3) & ~3;
  }
  return \%a;
}

sub cstr { my $v = shift; $v =~ s/\0.*\z//s; return $v; }

my $seq = 0;
# One rtnetlink dump: the payload of every message of the given type, or undef on failure.
sub dump_of {
  my ($sock, $type, $body) = @_;
  $seq++;
  my $msg = pack('L S S L L', 16 + length $body, $type, 0x301, $seq, 0) . $body;
  send($sock, $msg, 0) or return undef;
  my @out;
  while (1) {
    my $buf = '';
    defined recv($sock, $buf, 1 << 20, 0) or return undef;
    return undef if $buf eq '';
    my $off = 0;
    while ($off + 16 <= length $buf) {
      my ($len, $t, $flags, $s) = unpack 'L S S L', substr($buf, $off, 12);
      last if $len < 16;
      if ($s == $seq) {
        return \@out if $t == 3;
        return undef if $t == 2;
        push @out, substr($buf, $off + 16, $len - 16) if $t == $type - 2;
      }
      $off += ($len + 3) & ~3;
    }
  }
}

# Links with their addresses, and the IPv4 main-table routes, of the current netns, as two JSON lines.
sub observe_here {
  socket(my $sock, $AF_NETLINK, SOCK_RAW, 0) or return 0;
  bind($sock, pack('S S L L', $AF_NETLINK, 0, 0, 0)) or return 0;
  my $links = dump_of($sock, 18, pack('C C S l L L', 0, 0, 0, 0, 0, 0)) or return 0;
  my $addrs = dump_of($sock, 22, pack('C C C C L', 0, 0, 0, 0, 0)) or return 0;
  my $routes = dump_of($sock, 26, pack('C C C C C C C C L', AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)) or return 0;
  my (%name, @order, %link);
  for my $m (@$links) {
    my (undef, undef, undef, $index, $flags) = unpack 'C C S l L', $m;
    my $a = attrs($m, 16);
    $name{$index} = cstr($a->{3} // '');
    push @order, $index;
    $link{$index} = { flags => $flags, a => $a, addrs => [] };
  }
  for my $m (@$addrs) {
    my ($family, $plen, undef, $scope, $index) = unpack 'C C C C L', $m;
    next unless $link{$index} && ($family == AF_INET || $family == AF_INET6);
    my $a = attrs($m, 8);
    my $raw = $a->{2} // $a->{1};
    next unless defined $raw;
    my $ip = inet_ntop($family, $raw);
    push @{ $link{$index}{addrs} }, '{"family":' . jstr($family == AF_INET ? 'inet' : 'inet6') . ',"local":' . jstr($ip) . ',"prefixlen":' . $plen . ',"scope":' . jstr($SCOPE{$scope} // $scope) . '}';
  }
  my @lj;
  for my $index (@order) {
    my $l = $link{$index};
    my $a = $l->{a};
    my @f;
    push @f, '"ifindex":' . $index, '"ifname":' . jstr($name{$index});
    push @f, '"link_index":' . unpack('L', $a->{5}) if defined $a->{5} && defined $a->{37};
    push @f, '"flags":[' . ($l->{flags} & 1 ? '"UP"' : '') . ']';
    if (defined $a->{10}) { my $m = unpack 'L', $a->{10}; push @f, '"master":' . jstr($name{$m} // $m) if $m; }
    push @f, '"ifalias":' . jstr(cstr($a->{20})) if defined $a->{20} && cstr($a->{20}) ne '';
    if (defined $a->{18}) { my $kind = attrs($a->{18}, 0)->{1}; push @f, '"linkinfo":{"info_kind":' . jstr(cstr($kind)) . '}' if defined $kind; }
    push @f, '"addr_info":[' . join(',', @{ $l->{addrs} }) . ']';
    push @lj, '{' . join(',', @f) . '}';
  }
  my @rj;
  for my $m (@$routes) {
    my ($family, $dlen, undef, undef, $table, $proto, undef, $type) = unpack 'C C C C C C C C', $m;
    my $a = attrs($m, 12);
    $table = unpack 'L', $a->{15} if defined $a->{15};
    next unless $family == AF_INET && $table == 254;
    my $dst = $dlen == 0 && !defined $a->{1} ? 'default' : inet_ntop(AF_INET, $a->{1} // "\0\0\0\0") . ($dlen == 32 ? '' : "/$dlen");
    my @f = ('"type":' . jstr($RTYPE[$type] // $type), '"dst":' . jstr($dst));
    if (defined $a->{4}) { my $oif = unpack 'L', $a->{4}; push @f, '"dev":' . jstr($name{$oif} // $oif); }
    push @f, '"metric":' . unpack('L', $a->{6}) if defined $a->{6};
    push @f, '"protocol":' . jstr($PROTO{$proto} // $proto);
    push @rj, '{' . join(',', @f) . '}';
  }
  print '[' . join(',', @lj) . "]\n[" . join(',', @rj) . "]\n";
  close $sock;
  return 1;
}

sub enter {
  my $path = shift;
  open(my $fh, '<', $path) or return 0;
  my $ok = syscall($SYS_setns, fileno($fh), $CLONE_NEWNET) == 0;
  close $fh;
  return $ok;
}

my ($host, $start, @names) = @ARGV;
my $v6 = -d '/proc/sys/net/ipv6/conf';
print "\@\@host\n";
if ($host ne '' && !enter("/run/netns/$host")) { print STDERR "cannot enter netns $host: $!\n"; print "\@\@fail\n\@\@end\n"; exit 1; }
observe_here() or print "\@\@fail\n";
if ($start ne '') {
  opendir(my $d, '/run/netns') or die "/run/netns: $!\n";
  @names = sort grep { index($_, $start) == 0 } readdir $d;
  closedir $d;
}
for my $ns (@names) {
  next unless -e "/run/netns/$ns";
  print "\@\@ns $ns\n";
  if (!enter("/run/netns/$ns")) { print "\@\@fail\n"; next; }
  if ($v6) {
    my @v;
    for my $which ('all', 'default') {
      open(my $f, '<', "/proc/sys/net/ipv6/conf/$which/disable_ipv6") or next;
      my $x = <$f>;
      close $f;
      chomp $x if defined $x;
      push @v, $x if defined $x;
    }
    print '@@ipv6 ' . join(' ', @v) . "\n";
  } else {
    print "\@\@ipv6 none\n";
  }
  observe_here() or print "\@\@fail\n";
}
print "\@\@end\n";
`;
