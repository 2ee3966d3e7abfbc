// An unmodified @azure/identity app: prints the token it got, or the error, as JSON.
import { ManagedIdentityCredential } from "@azure/identity";
const resource = process.argv[2];
const clientId = process.argv[3];
const cred = clientId ? new ManagedIdentityCredential({ clientId }) : new ManagedIdentityCredential();
try {
  const t = await cred.getToken(resource + "/.default");
  console.log(JSON.stringify({ token: t.token, expiresOnTimestamp: t.expiresOnTimestamp }));
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.message || e) }));
  process.exit(3);
}
