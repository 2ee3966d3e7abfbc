// GetToken is an unmodified .NET app asking for a token through Azure.Identity or MSAL.NET's
// managed-identity support, the way an app in a pod would: no endpoint of its own, only
// what the SDK finds (the metadata address, or IDENTITY_ENDPOINT on App Service).
//
//   GetToken managed-identity|default|msal <resource> [<client id>]
//   GetToken msal-source
//
// It prints one JSON line: the token, the expiry the SDK computed and the SDK's version,
// or the error and its exception type (exit code 3). `msal-source` asks MSAL.NET (4.7x and
// later) which managed-identity source it finds, which probes IMDS, and prints its answer.
// Only public APIs are called (that one by reflection: this app is compiled against 4.56).
using System;
using System.IO;
using System.Reflection;
using System.Text;
using System.Threading;
using Azure.Core;
using Azure.Identity;
using Microsoft.Identity.Client;
using Microsoft.Identity.Client.AppConfig;

public static class GetToken
{
    static string Json(string value)
    {
        var s = new StringBuilder("\"");
        foreach (char c in value)
        {
            if (c == '"' || c == '\\') s.Append('\\').Append(c);
            else if (c < ' ') s.AppendFormat("\\u{0:x4}", (int)c);
            else s.Append(c);
        }
        return s.Append('"').ToString();
    }

    static string VersionOf(Type type)
    {
        var attribute = type.Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>();
        string version = attribute != null ? attribute.InformationalVersion : type.Assembly.GetName().Version.ToString();
        int plus = version.IndexOf('+');
        return plus < 0 ? version : version.Substring(0, plus);
    }

    // Azure.Identity: ManagedIdentityCredential, or DefaultAzureCredential (whose chain
    // reaches managed identity when nothing else is configured).
    static string WithAzureIdentity(bool chain, string resource, string clientId)
    {
        TokenCredential credential;
        if (chain)
        {
            var options = new DefaultAzureCredentialOptions();
            if (clientId != null) options.ManagedIdentityClientId = clientId;
            credential = new DefaultAzureCredential(options);
        }
        else
        {
            credential = new ManagedIdentityCredential(clientId);
        }
        var context = new TokenRequestContext(new[] { resource + "/.default" });
        AccessToken token = credential.GetToken(context, CancellationToken.None);
        return Result(token.Token, token.ExpiresOn, VersionOf(typeof(ManagedIdentityCredential)));
    }

    // MSAL.NET's ManagedIdentityApplication on its own.
    static string WithMsal(string resource, string clientId)
    {
        ManagedIdentityId id = clientId == null
            ? ManagedIdentityId.SystemAssigned
            : ManagedIdentityId.WithUserAssignedClientId(clientId);
        IManagedIdentityApplication app = ManagedIdentityApplicationBuilder.Create(id).Build();
        AuthenticationResult result = app.AcquireTokenForManagedIdentity(resource)
            .ExecuteAsync().GetAwaiter().GetResult();
        return Result(result.AccessToken, result.ExpiresOn, VersionOf(typeof(ManagedIdentityApplicationBuilder)));
    }

    // ManagedIdentityApplication.GetManagedIdentitySourceAsync(CancellationToken), whose
    // ManagedIdentitySourceResult says the source and why IMDS v1 or v2 was not taken.
    static string MsalSource()
    {
        object app = ManagedIdentityApplicationBuilder.Create(ManagedIdentityId.SystemAssigned).Build();
        MethodInfo method = app.GetType().GetMethod("GetManagedIdentitySourceAsync", new[] { typeof(CancellationToken) });
        if (method == null) throw new NotSupportedException("this MSAL.NET has no GetManagedIdentitySourceAsync");
        var task = (System.Threading.Tasks.Task)method.Invoke(app, new object[] { CancellationToken.None });
        task.GetAwaiter().GetResult();
        object result = task.GetType().GetProperty("Result").GetValue(task);
        var line = new StringBuilder("{");
        foreach (string name in new[] { "Source", "ImdsV1FailureReason", "ImdsV2FailureReason" })
        {
            object value = result.GetType().GetProperty(name).GetValue(result);
            if (line.Length > 1) line.Append(',');
            line.Append(Json(name)).Append(':').Append(value == null ? "null" : Json(value.ToString()));
        }
        return line.Append(",\"sdk_version\":").Append(Json(VersionOf(typeof(ManagedIdentityApplicationBuilder)))).Append('}').ToString();
    }

    static string Result(string token, DateTimeOffset expiresOn, string version)
    {
        return "{\"token\":" + Json(token) + ",\"expires_on\":" + expiresOn.ToUnixTimeSeconds()
            + ",\"sdk_version\":" + Json(version) + "}";
    }

    // What a binding redirect does for a .NET Framework app: an assembly asked for at a
    // version this directory does not have is taken from here at the version it has. MSAL.NET
    // 4.8x was built against Microsoft.IdentityModel.Abstractions 8.x, which targets .NET 6;
    // on this runtime the 6.x one it shipped with before serves its calls.
    static Assembly FromAppDirectory(object sender, ResolveEventArgs e)
    {
        string path = Path.Combine(AppContext.BaseDirectory, new AssemblyName(e.Name).Name + ".dll");
        return File.Exists(path) ? Assembly.LoadFrom(path) : null;
    }

    public static int Main(string[] args)
    {
        AppDomain.CurrentDomain.AssemblyResolve += FromAppDirectory;
        bool source = args.Length == 1 && args[0] == "msal-source";
        if (!source && (args.Length < 2 || args.Length > 3))
        {
            Console.Error.WriteLine("usage: GetToken managed-identity|default|msal <resource> [<client id>] | msal-source");
            return 2;
        }
        string clientId = args.Length == 3 ? args[2] : null;
        try
        {
            string line;
            switch (args[0])
            {
                case "managed-identity": line = WithAzureIdentity(false, args[1], clientId); break;
                case "default": line = WithAzureIdentity(true, args[1], clientId); break;
                case "msal": line = WithMsal(args[1], clientId); break;
                case "msal-source": line = MsalSource(); break;
                default: Console.Error.WriteLine("unknown SDK " + args[0]); return 2;
            }
            Console.WriteLine(line);
            return 0;
        }
        catch (Exception e)
        {
            Console.WriteLine("{\"error\":" + Json(e.Message) + ",\"error_type\":" + Json(e.GetType().FullName) + "}");
            return 3;
        }
    }
}
