// A tiny SMSC on the npm package `smpp` (an implementation independent of aiosmpplib),
// for tests/test_smpp_node.py.  Prints {"port": N} once listening, then one JSON line
// per submit_sm; reads JSON commands on stdin: {"inbound": [sender, text]} and
// {"inbound_parts": [sender, [part1, part2, ...], ref]}.
const smpp = require("smpp");
const readline = require("readline");

const SYSTEM_ID = process.argv[2];
const PASSWORD = process.argv[3];
let counter = 0x7b00;
const sessions = [];

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const server = smpp.createServer({ debug: false }, (session) => {
  session.on("bind_transceiver", (pdu) => {
    if (pdu.system_id !== SYSTEM_ID || pdu.password !== PASSWORD) {
      session.send(pdu.response({ command_status: smpp.ESME_RBINDFAIL }));
      session.close();
      return;
    }
    session.send(pdu.response());
    sessions.push(session);
    out({ bound: true });
  });
  session.on("enquire_link", (pdu) => session.send(pdu.response()));
  session.on("unbind", (pdu) => {
    session.send(pdu.response());
    session.close();
  });
  session.on("submit_sm", (pdu) => {
    const dest = pdu.destination_addr;
    if (dest.endsWith("999")) {
      session.send(pdu.response({ command_status: smpp.ESME_RINVDSTADR }));
      return;
    }
    if (dest.endsWith("888")) {
      session.send(pdu.response({ command_status: smpp.ESME_RTHROTTLED }));
      return;
    }
    counter += 1;
    const id = counter.toString(16).toUpperCase(); // hex, upper case
    session.send(pdu.response({ message_id: id }));
    const sm = pdu.short_message;
    out({
      submit: {
        id,
        to: dest,
        from: pdu.source_addr,
        source_ton: pdu.source_addr_ton,
        esm_class: pdu.esm_class,
        data_coding: pdu.data_coding,
        udh: sm.udh ? sm.udh.map((b) => Array.from(b)) : [],
        text: sm.message,
      },
    });
    if (pdu.registered_delivery) {
      const decimal = String(counter); // the receipt writes the id in decimal
      session.deliver_sm({
        source_addr: dest,
        destination_addr: pdu.source_addr,
        esm_class: 4,
        short_message: `id:${decimal} sub:001 dlvrd:001 submit date:2501011200 done date:2501011201 stat:DELIVRD err:000 text:`,
      });
    }
  });
});

server.listen(0, "127.0.0.1", () => out({ port: server.address().port }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  const session = sessions[sessions.length - 1];
  if (cmd.inbound) {
    const [sender, text] = cmd.inbound;
    session.deliver_sm({
      source_addr: sender,
      source_addr_ton: 1,
      source_addr_npi: 1,
      destination_addr: "12345",
      short_message: text,
    });
  } else if (cmd.inbound_parts) {
    const [sender, parts, ref] = cmd.inbound_parts;
    parts.forEach((text, i) => {
      session.deliver_sm({
        source_addr: sender,
        source_addr_ton: 1,
        source_addr_npi: 1,
        destination_addr: "12345",
        esm_class: 0x40,
        short_message: { udh: Buffer.from([5, 0, 3, ref, parts.length, i + 1]), message: text },
      });
    });
  } else if (cmd.exit) {
    process.exit(0);
  }
});
