// DepsJson prints the .deps.json of an app directory: each assembly in it with the assembly
// and file versions it really has. The .NET Core host prefers an app's own copy of an
// assembly over the shared framework's only when this file says the app's copy is newer;
// without it, .NET Core 3.1's older System.Diagnostics.DiagnosticSource wins and Azure.Core
// (built against 6.0) fails to load.
//
//   DepsJson <app name> <app directory>
using System;
using System.Diagnostics;
using System.IO;
using System.Reflection;
using System.Text;

public static class DepsJson
{
    public static int Main(string[] args)
    {
        string app = args[0] + "/1.0.0";
        var files = Directory.GetFiles(args[1], "*.dll");
        Array.Sort(files, StringComparer.Ordinal);
        var runtime = new StringBuilder();
        foreach (string path in files)
        {
            Version version = AssemblyName.GetAssemblyName(path).Version;
            string file = FileVersionInfo.GetVersionInfo(path).FileVersion;
            if (runtime.Length > 0) runtime.Append(',');
            runtime.AppendFormat(
                "\"{0}\":{{\"assemblyVersion\":\"{1}\",\"fileVersion\":\"{2}\"}}",
                Path.GetFileName(path), version, file);
        }
        Console.WriteLine(
            "{\"runtimeTarget\":{\"name\":\".NETCoreApp,Version=v3.1\"},"
            + "\"targets\":{\".NETCoreApp,Version=v3.1\":{\"" + app + "\":{\"runtime\":{" + runtime + "}}}},"
            + "\"libraries\":{\"" + app + "\":{\"type\":\"project\",\"serviceable\":false,\"sha512\":\"\"}}}");
        return 0;
    }
}
