; Initial policy zone. rpz-guard learners add entries by TSIG-signed UPDATE;
; BIND keeps the changes in a journal next to this file.
$TTL 60
@   IN SOA  ns.rpz.example.com. hostmaster.example.com. (
            1       ; serial
            3600    ; refresh
            600     ; retry
            604800  ; expire
            60 )    ; minimum
    IN NS   ns.rpz.example.com.
ns  IN A    192.0.2.53
; A name server (class DNS, 127.0.0.1) and a mail exchanger (class SMTP,
; 127.0.0.25), IPv4 owner = the address literal under the zone.
198.51.100.53   IN A 127.0.0.1
198.51.100.25   IN A 127.0.0.25
; IPv6 and prefixes use BIND's rpz-ip form.
128.25.zz.100.db8.2001.rpz-ip IN A 127.0.0.25
